"""What a long-term memory of whole writes matches a prompt against: each write's key ids.

Without a tokenizer a write's key is its distinct token ids. With one, the text is lowercased
and tokenized again, and every token is mapped to one id per spelling (its text, stripped of
spaces and lowercased), so "Ravi's", "ravi" and " Ravi" share keys whatever their case or
place in a sentence.

A question prompt also holds its chat frame (a system line, role names) around the question:
words that match every write that happens to use them and none that the question is about. A
prompt in the `frame` (what an Engine's question prompt puts before and after its question) is
keyed by its question alone; writes and other prompts by all their words, so that "How should I
address the user?" meets "User: my friends know me as Greta.". On the evaluation's streams, as
the default writes them (64-token chunks), this and BM25's length term
(`write_memory.best_matches`) bring a fact's write into the best 4 for 98-100% of told
questions at k = 0-200 (95-98% with the frame's words left out of every key, as training still
keys: `left_out`; 45-78% with neither); on the outside set 91-94% (93-94%; 47-56%).
"""

from __future__ import annotations

import functools

import torch


def distinct_ids(ids: torch.Tensor) -> torch.Tensor:
    """The key without a tokenizer: the distinct token ids."""
    return ids.flatten().to("cpu", torch.long).unique()


class LexicalKeys:
    """Keys of token ids through `tokenizer`: lowercased, one id per spelling (see the module).

    `frame`: what a question prompt puts before and after its question. `left_out`: a text whose
    words no key holds (the shipped adapter was trained recalling by keys that left out its
    question frame's words, and `memagent train` keys so to reproduce it)."""

    def __init__(self, tokenizer, frame: tuple[str, str] = ("", ""), *, left_out: str = ""):
        self.tokenizer = tokenizer
        self.frame = frame
        self.left_out = left_out

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
    def frame_words(self) -> torch.Tensor:
        """The spelling ids of the frame's words."""
        return self.spellings("".join(self.frame))

    @functools.cached_property
    def _left_out(self) -> torch.Tensor:
        return self.spellings(self.left_out)

    def spellings(self, text: str) -> torch.Tensor:
        """The distinct spelling ids of `text`'s words."""
        lowered = torch.tensor(self.tokenizer(text.lower(), add_special_tokens=False)["input_ids"], dtype=torch.long)
        return self._spelling[lowered.clamp(max=len(self._spelling) - 1)].unique()

    def question_of(self, prompt: str) -> str:
        """The question a prompt in the frame puts; any other text whole."""
        before, after = self.frame
        if prompt.startswith(before) and prompt.endswith(after) and len(prompt) >= len(before) + len(after):
            return prompt[len(before) : len(prompt) - len(after)]
        return prompt

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        key = self.spellings(self.question_of(self.tokenizer.decode(ids.flatten().tolist())))
        return key[~torch.isin(key, self._left_out)]

    def tokens_spelled(self, key: torch.Tensor) -> torch.Tensor:
        """[V] bool: the token ids spelled as one of `key`'s ids, in any case, with or without
        a leading space."""
        return torch.isin(self._spelling, key)
