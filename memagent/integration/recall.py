"""When an adapter asks the memory on its own (automatic recall): every message, questions only, or
never. Recall runs a generation, so "never" and a message that is no question cost nothing."""

from __future__ import annotations

import re
from typing import Literal

from memagent.abstention import is_abstention

RecallMode = Literal["always", "questions", "never"]

# A question ends with "?" or opens with a question word or an inverted auxiliary.
_QUESTION_START = re.compile(
    r"^\s*(who|whom|whose|what|which|where|when|why|how|do|does|did|is|are|was|were|am|can|could|"
    r"will|would|shall|should|may|might|must|have|has|had)\b",
    re.IGNORECASE,
)


def is_question(text: str) -> bool:
    text = text.strip()
    return text.endswith("?") or bool(_QUESTION_START.match(text))


def should_recall(mode: RecallMode, text: str) -> bool:
    """Whether automatic recall runs for `text` (the latest user message) under `mode` (the
    adapters' pydantic fields refuse any other mode when they are built)."""
    return bool(text.strip()) and (mode == "always" or (mode == "questions" and is_question(text)))


def recalled(answer: str) -> str:
    """What automatic recall adds to a chat: the memory's answer, or nothing when it said "I don't know."."""
    return "" if is_abstention(answer) else answer
