"""What a long-term memory of whole writes matches a prompt against: each write's key ids.

Without a tokenizer a write's key is its distinct token ids. With one, the text is lowercased
and tokenized again, and every token is mapped to one id per spelling (its text, stripped of
spaces and lowercased), so "Ravi's", "ravi" and " Ravi" share keys whatever their case or
place in a sentence: on the evaluation's stream this brings a fact's write into the 4 best
matches for 53-58 of 60 questions (0 to 200 writes later) where plain token ids bring 42-50.
"""

from __future__ import annotations

import functools

import torch


def distinct_ids(ids: torch.Tensor) -> torch.Tensor:
    """The key without a tokenizer: the distinct token ids."""
    return ids.flatten().to("cpu", torch.long).unique()


class LexicalKeys:
    """Keys of token ids through `tokenizer`: lowercased, one id per spelling (see the module)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @functools.cached_property
    def _spelling(self) -> torch.Tensor:
        """[V]: for each token id, the first id of the same stripped, lowercased text. Tokens
        holding part of a character's bytes decode to U+FFFD and keep their own id."""
        forms = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        first: dict[str, int] = {}
        return torch.tensor(
            [i if "\ufffd" in form else first.setdefault(form.strip().lower(), i) for i, form in enumerate(forms)]
        )

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        text = self.tokenizer.decode(ids.flatten().tolist()).lower()
        lowered = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        return self._spelling[lowered.clamp(max=len(self._spelling) - 1)].unique()
