"""Recall of held-out facts after k later writes, and the controls that frame it.

One shared stream per measurement: the facts written one after another with `gap` unrelated
writes (held-out prose) between them, then enough prose that the last fact lies max(k) writes
back. Fact i is asked its question after exactly k later writes, for every k; every write
after it counts, later facts included. Each fact also brings a never-told question (a
held-out fact no write tells: right by chance, or "I don't know."), asked at one k, cycling
over the ks. Reads change no state, so the questions due at one moment are read in one batch,
with `NamedPool.ask`'s prompt and options. The base model answers with the fact in its prompt
(upper bound) and without it (what it guesses). The outside set (`outside.py`: hand-written
forms, never trained on) runs the same way in a stream of its own.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from memagent.abstention import ABSTENTION, is_abstention
from memagent.engine import Engine, NamedPool
from memagent.evaluation.outside import Write
from memagent.sampling import SamplingParams
from memagent.train.corpus import Fact, FactSampler, general_paragraphs

# Room for the longest answer of the outside set (18 tokens: a phone number written digit by digit).
ANSWER_TOKENS = 24
PROSE_CHARS = 300


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


def told_and_never_told(n: int, seed: int) -> tuple[list[Fact], list[Fact]]:
    """`n` held-out facts to write and `n` to ask without writing them; all about different
    subjects with different answers, so no write answers a never-told question."""
    facts = FactSampler("eval", seed=seed).distinct(2 * n)
    return facts[:n], facts[n:]


def unrelated_writes(fact: Fact, count: int, seed: int) -> list[str]:
    """Held-out facts about other subjects and held-out prose, alternating (a fact's own stream of
    writes; the perplexity pool and the benchmarks use it)."""
    rng = random.Random(seed)
    sampler, prose = FactSampler("eval", seed=seed), general_paragraphs("eval")
    writes = []
    while len(writes) < count:
        if len(writes) % 2:
            writes.append(rng.choice(prose)[:PROSE_CHARS])
            continue
        other = sampler.fact()
        if other.subject != fact.subject and fact.answer.lower() not in other.text.lower():
            writes.append(other.text)
    return writes


def prose_writes(count: int, seed: int, avoid: Sequence[str]) -> list[str]:
    """`count` held-out prose paragraphs (cut to PROSE_CHARS) that name none of `avoid`."""
    words = re.compile("|".join(rf"\b{re.escape(a)}\b" for a in avoid), re.IGNORECASE) if avoid else None
    paragraphs = [p[:PROSE_CHARS] for p in general_paragraphs("eval")]
    usable = [p for p in paragraphs if words is None or not words.search(p)]
    rng = random.Random(seed)
    return [rng.choice(usable) for _ in range(count)]


@dataclass(frozen=True)
class Question:
    """A question asked `k` writes after its fact was written (for a never-told one: after the
    write it comes with)."""

    text: str
    k: int
    fact: Fact | None  # what a right reply contains; None: a never-told question without an answer
    told: bool


@dataclass
class Stream:
    """Writes in order, and the questions due after a number of them (`due[n]`: after n writes)."""

    ks: list[int]
    writes: list[str]
    due: dict[int, list[Question]]


def stream(
    writes: Sequence[Write], never_told: Sequence[tuple[str, Fact | None]], ks: Sequence[int], *, gap: int, seed: int
) -> Stream:
    """Write i at position i * (gap + 1), prose between and after; its facts asked at every k,
    and never-told question i (cycling over `never_told`: question, its fact if any) at k = ks[i % len(ks)]."""
    ks = sorted(ks)
    at = [i * (gap + 1) for i in range(len(writes))]
    total = at[-1] + max(ks) + 1
    avoid = [f.answer for w in writes for f in w.facts] + [f.answer for _, f in never_told if f]
    prose = iter(prose_writes(total - len(writes), seed, avoid))
    texts = {p: w.text for p, w in zip(at, writes)}
    due: dict[int, list[Question]] = defaultdict(list)
    for i, (p, write) in enumerate(zip(at, writes)):
        for k in ks:
            due[p + k + 1] += [Question(f.question, k, f, True) for f in write.facts]
        question, fact = never_told[i % len(never_told)]
        k = ks[i % len(ks)]
        due[p + k + 1].append(Question(question, k, fact, False))
    return Stream(ks, [texts.get(p) or next(prose) for p in range(total)], dict(due))


def fact_stream(told: Sequence[Fact], never_told: Sequence[Fact], ks: Sequence[int], *, gap: int, seed: int) -> Stream:
    writes = [Write(f.relation, f.text, (f,)) for f in told]
    return stream(writes, [(f.question, f) for f in never_told], ks, gap=gap, seed=seed)


def outside_stream(
    writes: Sequence[Write], never_told: Sequence[str], ks: Sequence[int], *, gap: int, seed: int
) -> Stream:
    return stream(writes, [(q, None) for q in never_told], ks, gap=gap, seed=seed)


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
    grounded: Retention | None = None  # the same replies as a grounded ask gives them

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

    def record(self, question: Question, reply: str) -> None:
        if question.told:
            self.told(question.k, reply, question.fact)
        else:
            self.never_told(question.k, reply, question.fact)


def ask_all(pool: NamedPool, questions: Sequence[str]) -> list[str]:
    """`pool.ask` of every question, those that read decoded in one batch."""
    read = [q for q in questions if not pool.engine.abstains(pool.pool, q)]
    prompts = [pool.engine.question_prompt(q) for q in read]
    params = SamplingParams.for_ask(max_new_tokens=ANSWER_TOKENS)
    replies = pool.generate_batch(prompts, params, answers=True) if read else []
    answers = dict(zip(read, (reply.strip() for reply in replies)))
    return [answers.get(q, ABSTENTION) for q in questions]


def run_stream(pool: NamedPool, writes: Stream, desc: str, grounded: bool = False) -> Retention:
    """Write the stream into `pool` (from empty), asking each question when it is due;
    `grounded`: also record the replies as a grounded ask gives them (`Engine.grounding`)."""
    result = Retention(writes.ks, grounded=Retention(writes.ks) if grounded else None)
    pool.reset()
    for done, text in enumerate(tqdm(writes.writes, desc=desc, unit="write"), start=1):
        pool.inject(text, progress=False)
        questions = writes.due.get(done, [])
        for question, reply in zip(questions, ask_all(pool, [q.text for q in questions])):
            result.record(question, reply)
            if grounded:
                supported = pool.engine.grounding(pool.pool, question.text)
                result.grounded.record(question, reply if supported(reply) else ABSTENTION)
    return result


def measure_stream(engine: Engine, writes: Stream, desc: str, grounded: bool = False) -> Retention:
    name = f"eval-{desc}"
    try:
        return run_stream(engine.pool(name), writes, desc, grounded)
    finally:
        engine.drop(name)


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
