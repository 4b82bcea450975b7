"""Turning generated token ids into text pieces as they arrive, honouring stop strings."""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """Incremental detokenizer for one sequence.

    Holds back text that may still change: an incomplete UTF-8 character, or a tail that could
    be the start of a stop string. Once a stop string appears, the text ends just before it.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.emitted = 0  # characters of the text already handed out
        self.stopped = False

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add one token; return the text that is now final (maybe empty)."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        text = self._text()
        for s in self.stop:
            at = text.find(s, max(0, self.emitted - len(s)))
            if at != -1:
                self.stopped = True
                text = text[:at]
        if self.stopped:
            return self._emit(text, len(text))
        safe = len(text) - self._unsafe_tail(text)
        return self._emit(text, safe)

    def finish(self) -> str:
        """End the text (EOS or length limit): release what was held back."""
        if self.stopped:
            return ""
        self.stopped = True
        return self._emit(self._text(), None)

    def _emit(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        piece = text[self.emitted : max(end, self.emitted)]
        self.emitted = max(end, self.emitted)
        return piece

    def _unsafe_tail(self, text: str) -> int:
        tail = 1 if text.endswith("\ufffd") else 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if s.startswith(text[-n:]):
                    tail = max(tail, n)
                    break
        return tail
