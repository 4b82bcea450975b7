"""What a long-term memory of whole writes matches a prompt against: each write's key ids.

Without a tokenizer a write's key is its distinct token ids. With one, the text is lowercased
and cut into words, each tokenized again as after a space, and every token is mapped to one id
per spelling (its text, stripped of spaces and lowercased), so "Ravi's", "ravi" and " Ravi"
share keys whatever their case or place in a sentence. Tokenized whole, a text splits a word
that starts it or a line unlike the same word after a space ("Tomas Quinn earns ..." as "t"
"omas", "What is Tomas's profession?" as " to" "mas"), and a question rarely starts with the
name its write starts with.

A question prompt also holds its chat frame (a system line, role names) around the question:
words that match every write that happens to use them and none that the question is about. A
prompt in the `frame` (what an Engine's question prompt puts before and after its question) is
keyed by its question alone; writes and other prompts by all their words, so that "How should I
address the user?" meets "User: my friends know me as Greta.". On the evaluation's streams, as
the default writes them (64-token chunks), this and BM25's length term
(`write_memory.best_matches`) bring a fact's write into the best 4 for 98-100% of told
questions at k = 0-200 (95-98% with the frame's words left out of every key, as training still
keys: `left_out`; 45-78% with neither); on the outside set 91-94% (93-94%; 47-56%). Each word
keyed alone took the outside set to 96% at k = 0 (docs/default_model.md, "A name that
starts a write meets the question that names it").
"""

from __future__ import annotations

import functools
import re

import torch


# A word (with its "'s" or "'t"), or a run of marks: each is keyed alone (see the module).
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")


def distinct_ids(ids: torch.Tensor) -> torch.Tensor:
    """The key without a tokenizer: the distinct token ids."""
    return ids.flatten().to("cpu", torch.long).unique()


class LexicalKeys:
    """Keys of token ids through `tokenizer`: lowercased, one id per spelling (see the module).

    `frame`: what a question prompt puts before and after its question. `left_out`: a text whose
    words no key holds. `words_alone`: each word tokenized alone (see the module), or the text
    whole. The shipped adapter was trained recalling by keys of whole texts that left out its
    question frame's words, and `memagent train` keys so to reproduce it."""

    def __init__(self, tokenizer, frame: tuple[str, str] = ("", ""), *, left_out: str = "", words_alone: bool = True):
        self.tokenizer = tokenizer
        self.frame = frame
        self.left_out = left_out
        self.words_alone = words_alone

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
    def _blank(self) -> int:
        """The spelling id of whitespace."""
        return int(self._spelling[self.tokenizer(" ", add_special_tokens=False)["input_ids"][0]])

    @functools.cached_property
    def frame_words(self) -> torch.Tensor:
        """The spelling ids of the frame's words."""
        return self.spellings("".join(self.frame))

    @functools.cached_property
    def _left_out(self) -> torch.Tensor:
        return self.spellings(self.left_out)

    def spellings(self, text: str) -> torch.Tensor:
        """The distinct spelling ids of `text`'s words: each tokenized alone, as after a space
        (`words_alone`), or the text tokenized whole."""
        lowered = text.lower()
        if self.words_alone:
            words = _WORD.findall(lowered)
            lowered = " " + " ".join(words) if words else ""
        tokens = torch.tensor(self.tokenizer(lowered, add_special_tokens=False)["input_ids"], dtype=torch.long)
        spelled = self._spelling[tokens.clamp(max=len(self._spelling) - 1)].unique()
        # A space the tokenizer keeps apart (before digits: " 1021") is no word.
        return spelled[spelled != self._blank] if self.words_alone else spelled

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
