"""The outside evaluation set: facts and questions written by hand, in forms the training
corpus does not produce (multi-turn chats, nested JSON, version strings and codes, names with
unusual spellings, sentences holding several facts, log lines, key-value notes, lists, emails,
calendar entries, tables), and questions about things never written. Training never draws its
answers (`memagent/train/episodes.py` excludes them); `tests/evaluation/test_outside_set.py`
checks that no training template, name or value overlaps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from memagent.train.corpus import Fact

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Write:
    """One text to write and the facts (question, answer) it holds."""

    form: str
    text: str
    facts: tuple[Fact, ...]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_writes(path: Path, source: str) -> tuple[Write, ...]:
    """The writes of a file of one JSON record a line: its `form`, `text` and `qa` (question,
    answer pairs); each fact's relation is `source`:i."""
    writes = []
    for i, record in enumerate(_lines(path)):
        facts = tuple(Fact(record["form"], f"{source}:{i}", record["text"], q, a) for q, a in record["qa"])
        writes.append(Write(record["form"], record["text"], facts))
    return tuple(writes)


@cache
def outside_writes() -> tuple[Write, ...]:
    return read_writes(DATA / "outside_facts.jsonl", "outside")


@cache
def never_told_questions() -> tuple[str, ...]:
    """Questions about things no write in any evaluation tells."""
    return tuple(record["question"] for record in _lines(DATA / "never_told.jsonl"))


def outside_answers() -> frozenset[str]:
    """Every answer of the outside set, which training never uses as a value."""
    return frozenset(f.answer for w in outside_writes() for f in w.facts)
