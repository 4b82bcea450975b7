"""Recall of held-out facts after k unrelated writes, and the controls that frame it.

For each fact: write it into an empty pool, then unrelated writes one after another,
asking the fact's question (through `NamedPool.ask`, as a user would) whenever k reaches one of
the measured values. The same pools answer a question whose fact was never written (the
never-written control: right by chance, or "I don't know."). The base model answers with the
fact in its prompt (upper bound) and without it (what it guesses). The outside set
(`outside.py`: hand-written forms, never trained on) is measured the same way, with its
never-told questions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from memagent.abstention import is_abstention
from memagent.engine import Engine
from memagent.evaluation.outside import Write
from memagent.train.corpus import Fact, FactSampler, general_paragraphs

ANSWER_TOKENS = 10


def is_correct(reply: str, fact: Fact) -> bool:
    return fact.answer.lower() in reply.lower()


def held_out_facts(n: int, seed: int, *, tool: bool | None = None) -> list[Fact]:
    """`n` held-out facts; consecutive ones differ in subject and answer (fact i+1 is fact i's control)."""
    sampler = FactSampler("eval", seed=seed)
    facts = sampler.distinct(1, tool=tool)
    while len(facts) < n:
        fact = sampler.fact(tool=tool)
        if fact.subject != facts[-1].subject and fact.answer != facts[-1].answer:
            facts.append(fact)
    return facts


def unrelated_writes(fact: Fact, count: int, seed: int) -> list[str]:
    """Held-out facts about other subjects and held-out prose, alternating."""
    rng = random.Random(seed)
    sampler, prose = FactSampler("eval", seed=seed), general_paragraphs("eval")
    writes = []
    while len(writes) < count:
        if len(writes) % 2:
            writes.append(rng.choice(prose)[:300])
            continue
        other = sampler.fact()
        if other.subject != fact.subject and fact.answer.lower() not in other.text.lower():
            writes.append(other.text)
    return writes


@dataclass
class Retention:
    """Outcomes per k: told facts answered right (`recall`) or with "I don't know." (`refused`);
    never-written questions answered right by chance (`never_written`) or with "I don't know."
    (`abstained`)."""

    ks: list[int]
    recall: dict[int, list[bool]] = field(default_factory=dict)
    refused: dict[int, list[bool]] = field(default_factory=dict)
    never_written: dict[int, list[bool]] = field(default_factory=dict)
    abstained: dict[int, list[bool]] = field(default_factory=dict)

    @staticmethod
    def rate(outcomes: list[bool]) -> float:
        return sum(outcomes) / max(1, len(outcomes))

    def told(self, k: int, reply: str, fact: Fact) -> None:
        self.recall.setdefault(k, []).append(is_correct(reply, fact))
        self.refused.setdefault(k, []).append(is_abstention(reply))

    def never_told(self, k: int, reply: str, fact: Fact | None = None) -> None:
        if fact is not None:
            self.never_written.setdefault(k, []).append(is_correct(reply, fact))
        self.abstained.setdefault(k, []).append(is_abstention(reply))


def measure_retention(engine: Engine, facts: list[Fact], ks: list[int], seed: int) -> Retention:
    result = Retention(sorted(ks))
    pool = engine.pool("eval-retention")
    for i, fact in enumerate(tqdm(facts, desc="retention", unit="fact")):
        control = facts[(i + 1) % len(facts)]
        pool.reset()
        pool.inject(fact.text, progress=False)
        writes = unrelated_writes(fact, max(ks), seed + i)
        for k in range(max(ks) + 1):
            if k > 0:
                pool.inject(writes[k - 1], progress=False)
            if k in ks:
                result.told(k, pool.ask(fact.question, max_new_tokens=ANSWER_TOKENS), fact)
                result.never_told(k, pool.ask(control.question, max_new_tokens=ANSWER_TOKENS), control)
    engine.drop("eval-retention")
    return result


def measure_outside(
    engine: Engine, writes: Sequence[Write], never_told: Sequence[str], ks: list[int], seed: int
) -> Retention:
    """`measure_retention` on the outside set: each write's every question, and one never-told
    question per write and k, after k unrelated writes (held-out generator facts and prose)."""
    result = Retention(sorted(ks))
    pool = engine.pool("eval-outside")
    for i, write in enumerate(tqdm(writes, desc="outside set", unit="write")):
        pool.reset()
        pool.inject(write.text, progress=False)
        unrelated = [text for text in unrelated_writes(write.facts[0], 2 * max(ks), seed + i) if _apart(text, write)]
        for k in range(max(ks) + 1):
            if k > 0:
                pool.inject(unrelated[k - 1], progress=False)
            if k in ks:
                for fact in write.facts:
                    result.told(k, pool.ask(fact.question, max_new_tokens=ANSWER_TOKENS), fact)
                question = never_told[(i + k) % len(never_told)]
                result.never_told(k, pool.ask(question, max_new_tokens=ANSWER_TOKENS))
    engine.drop("eval-outside")
    return result


def _apart(text: str, write: Write) -> bool:
    return not any(f.answer.lower() in text.lower() for f in write.facts)


def recall_at_zero(engine: Engine, facts: list[Fact], desc: str) -> float:
    """Recall right after writing each fact alone into an empty pool."""
    pool, right = engine.pool("eval-recall"), 0
    for fact in tqdm(facts, desc=desc, unit="fact"):
        pool.reset()
        pool.inject(fact.text, progress=False)
        right += is_correct(pool.ask(fact.question, max_new_tokens=ANSWER_TOKENS), fact)
    engine.drop("eval-recall")
    return right / len(facts)


def in_prompt(fact: Fact) -> str:
    return f"{fact.text}\n{fact.question}"


def prompt_recall(engine: Engine, facts: list[Fact], *, with_fact: bool) -> float:
    """Recall of a model with an empty memory, the fact given in the prompt or not at all."""
    pool = engine.pool("eval-prompt")
    questions = [in_prompt(f) if with_fact else f.question for f in facts]
    right = 0
    for fact, question in zip(tqdm(facts, desc=f"base, fact {'in' if with_fact else 'not in'} prompt", unit="fact"), questions):
        right += is_correct(pool.ask(question, max_new_tokens=ANSWER_TOKENS), fact)
    engine.drop("eval-prompt")
    return right / len(facts)
