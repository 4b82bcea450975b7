"""What a long-term memory of whole writes matches a prompt against: each write's key ids.

Without a tokenizer a write's key is its distinct token ids. With one, the text is lowercased
and tokenized again, and every token is mapped to one id per spelling (its text, stripped of
spaces and lowercased), so "Ravi's", "ravi" and " Ravi" share keys whatever their case or
place in a sentence.

A prompt also holds its chat frame (a system line, role names): words that match every write
that happens to use them and none that the question is about. Keys leave out every spelling
of a `frame` text (an Engine passes its question prompt around an empty question). On the
evaluation's streams, as the default writes them (64-token chunks), this and BM25's length
term (`write_memory.best_matches`) bring a fact's write into the best 4 for 92-98% of told
questions at k = 0-200, where 45-78% came without either; on the outside set 93-94%, where
47-56%.
"""

from __future__ import annotations

import functools

import torch


def distinct_ids(ids: torch.Tensor) -> torch.Tensor:
    """The key without a tokenizer: the distinct token ids."""
    return ids.flatten().to("cpu", torch.long).unique()


class LexicalKeys:
    """Keys of token ids through `tokenizer`: lowercased, one id per spelling (see the module)."""

    def __init__(self, tokenizer, frame: str = ""):
        self.tokenizer = tokenizer
        self.frame = frame

    @functools.cached_property
    def _spelling(self) -> torch.Tensor:
        """[V]: for each token id, the first id of the same stripped, lowercased text. Tokens
        holding part of a character's bytes decode to U+FFFD and keep their own id."""
        forms = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        first: dict[str, int] = {}
        return torch.tensor(
            [i if "\ufffd" in form else first.setdefault(form.strip().lower(), i) for i, form in enumerate(forms)]
        )

    @functools.cached_property
    def _frame(self) -> torch.Tensor:
        return self.spellings(self.frame)

    def spellings(self, text: str) -> torch.Tensor:
        """The distinct spelling ids of `text`'s words (a key without the frame left out)."""
        lowered = torch.tensor(self.tokenizer(text.lower(), add_special_tokens=False)["input_ids"], dtype=torch.long)
        return self._spelling[lowered.clamp(max=len(self._spelling) - 1)].unique()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        key = self.spellings(self.tokenizer.decode(ids.flatten().tolist()))
        return key[~torch.isin(key, self._frame)]

    def tokens_spelled(self, key: torch.Tensor) -> torch.Tensor:
        """[V] bool: the token ids spelled as one of `key`'s ids, in any case, with or without
        a leading space."""
        return torch.isin(self._spelling, key)
