"""Training episodes: the writes a memory receives and the text it must then predict.

An episode is a pure function of (seed, step), so a resumed run sees exactly the episodes
it would have seen. Four objectives, the first three as in the MemoryLLM paper:
- recall: write one or more facts (separately or as one paragraph), ask about each; a share
  of the facts comes in the varied forms of `varied.py` (exact strings, nested JSON, chats,
  sentences holding two facts), the rest from the template relations of `corpus.py`;
- retention: after the facts, k unrelated writes (other facts of the same kinds, general
  text), k drawn log-uniformly up to a limit that grows with a schedule, so knowledge must
  survive the random drops of many later writes while most episodes stay cheap;
- abstention: in a share of episodes, a question about a fact that was never written, whose
  answer is exactly "I don't know."; a share of those (`near_miss_share`) asks close to a
  written fact, where its write is the look-alike: its subject for what was not written
  ("Where does Gemma live?" after "Gemma Fischer works as a locksmith."), a field its JSON
  output did not report, its exact string's thing of another subject (`near_miss_forms` says
  which of these forms: template, json, exact);
- continuation: write a chunk of general text, predict the text that follows it.
Every read also predicts a plain chunk of general text, which keeps general ability, and a
share of episodes (`blank_share`) writes nothing and predicts general text from an empty
memory: a memory before its first write reads as the adapted model alone, and nothing else
would teach that model to keep the base model's prose. No answer of the outside evaluation
set (`memagent/evaluation/data`) is ever drawn.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass, field

from memagent.abstention import ABSTENTION
from memagent.evaluation.outside import outside_answers
from memagent.train.corpus import RELATIONS, Fact, FactSampler, prose_tokens, told_of
from memagent.train.varied import EXACT, VariedSampler

NEAR_MISS_FORMS = ("template", "json", "exact")  # the forms whose facts have a near-miss question


@dataclass
class Target:
    prompt: list[int]
    completion: list[int]  # the only tokens with a loss
    kind: str  # "qa" or "text"


@dataclass
class Episode:
    writes: list[tuple[list[int], bool]] = field(default_factory=list)  # (ids, gradient flows through it)
    targets: list[Target] = field(default_factory=list)


@dataclass
class Schedule:
    """How hard episodes are at a step: both limits grow linearly over `ramp_steps`."""

    max_facts: int = 3
    max_distractors: int = 10
    ramp_steps: int = 500

    def at(self, step: int) -> tuple[int, int]:
        progress = min(1.0, step / max(1, self.ramp_steps))
        return 1 + round(progress * (self.max_facts - 1)), round(progress * self.max_distractors)

    @staticmethod
    def distractors(rng: random.Random, limit: int) -> int:
        """0..limit unrelated writes, log-uniform: as many episodes with 1-3 as with 10-30."""
        return min(limit, int(math.exp(rng.uniform(0.0, math.log(limit + 1)))) - 1) if limit else 0


class FactDraw:
    """Facts for one episode from both samplers, every subject and answer distinct, so each
    question has one right answer and a never-told question none among the writes."""

    def __init__(self, templates: FactSampler, varied: VariedSampler, varied_share: float, rng: random.Random):
        self.templates, self.varied, self.varied_share, self.rng = templates, varied, varied_share, rng
        self.drawn: list[Fact] = []

    def write(self, *, tool: bool | None = None) -> list[Fact]:
        """The facts of one write (two for a sentence holding two), distinct from all drawn."""
        while True:
            if self.rng.random() < self.varied_share:
                group = self.varied.facts()
            else:
                group = [self.templates.fact(tool=tool)]
            if all(self._apart(fact, other) for fact in group for other in self.drawn):
                self.drawn += group
                return group

    def near_miss(self, written: list[Fact], forms: Collection[str] = NEAR_MISS_FORMS) -> str | None:
        """A question close to what one of `written` in `forms` tells that no drawn fact answers:
        for a template fact, its subject (a person by the same names) asked for a relation no
        drawn fact tells of it; for the varied forms, `VariedSampler.unwritten_question`. None if
        no such fact has one (user turns, chats and sentences holding two have none)."""
        subjects = set().union(*map(_named, self.drawn))
        written = [fact for fact in written if form_of(fact) in forms]
        for fact in self.rng.sample(written, len(written)):
            if fact.relation in RELATIONS:
                question = self._another_relation(fact)
            else:
                question = self.varied.unwritten_question(fact, subjects)
            if question:
                return question
        return None

    def _another_relation(self, fact: Fact) -> str | None:
        kind, subject = fact.subject.split(":", 1)
        if kind == "user":
            return None
        known = {other.relation for other in self.drawn if _named(other) & _named(fact)}
        relations = [r for r, spec in RELATIONS.items() if spec["kind"] == kind and r not in known]
        if not relations:
            return None
        return told_of(self.templates.fact(self.rng.choice(relations)), subject).question

    @staticmethod
    def _apart(fact: Fact, other: Fact) -> bool:
        apart = fact.subject != other.subject and fact.answer != other.answer
        return apart and fact.answer not in other.text and other.answer not in fact.text


def form_of(fact: Fact) -> str:
    """The form `fact` was drawn in: "template" (`corpus.RELATIONS`) or one of `varied.FORMS`."""
    if fact.relation in RELATIONS:
        return "template"
    if fact.relation.startswith("json:"):
        return "json"
    return "exact" if fact.relation in EXACT else fact.relation


def _named(fact: Fact) -> set[str]:
    """The names a question about `fact`'s subject may use: a person's full and first name."""
    subject = fact.subject.split(":", 1)[1]
    return {subject, subject.split()[0]} if fact.subject.startswith("person:") else {subject}


class EpisodeMaker:
    def __init__(
        self,
        tokenizer,
        question_prompt,
        *,
        split="train",
        seed=0,
        schedule: Schedule | None = None,
        text_tokens=64,
        varied_share=0.5,
        abstain_share=0.3,
        blank_share=0.0,
        near_miss_share=0.0,
        near_miss_forms: Collection[str] = NEAR_MISS_FORMS,
    ):
        if unknown := set(near_miss_forms) - set(NEAR_MISS_FORMS):
            among, given = ", ".join(NEAR_MISS_FORMS), ", ".join(sorted(unknown))
            raise ValueError(f"near-miss forms must be among {among}, not {given}")
        self.tokenizer = tokenizer
        self.question_prompt = question_prompt
        self.split = split
        self.seed = seed
        self.schedule = schedule or Schedule()
        self.text_tokens = text_tokens
        self.varied_share = varied_share  # share of facts in the varied forms
        self.abstain_share = abstain_share  # share of fact episodes that also ask a never-told question
        self.blank_share = blank_share  # share of episodes that write nothing
        self.near_miss_share = near_miss_share  # share of never-told questions close to a written fact
        self.near_miss_forms = frozenset(near_miss_forms)  # of a written fact in one of these forms
        self.excluded = outside_answers()
        self.end = tokenizer.eos_token
        self.text = prose_tokens(tokenizer, split)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_chunk(self, rng: random.Random, length: int | None = None) -> list[int]:
        length = length or self.text_tokens
        start = rng.randrange(len(self.text) - length)
        return self.text[start : start + length]

    def qa_target(self, question: str, answer: str) -> Target:
        return Target(self.encode(self.question_prompt(question)), self.encode(answer + self.end), "qa")

    def text_target(self, ids: list[int], prompt_tokens: int = 4) -> Target:
        return Target(ids[:prompt_tokens], ids[prompt_tokens:], "text")

    def __call__(self, step: int) -> Episode:
        rng = random.Random(self.seed * 1_000_003 + step)
        templates = FactSampler(self.split, seed=rng.randrange(2**32))
        varied = VariedSampler(self.split, rng.randrange(2**32), self.excluded)
        draw = FactDraw(templates, varied, self.varied_share, rng)
        episode = Episode()
        kind = rng.random()
        if kind < self.blank_share:
            episode.targets.append(self.text_target(self.text_chunk(rng, 2 * self.text_tokens), prompt_tokens=1))
            return episode
        if kind < self.blank_share + 0.2:
            chunk = self.text_chunk(rng, 2 * self.text_tokens)
            episode.writes.append((chunk[: self.text_tokens], True))
            episode.targets.append(self.text_target(chunk[self.text_tokens :], prompt_tokens=1))
            return episode
        max_facts, max_distractors = self.schedule.at(step)
        n_facts, n_distractors = rng.randint(1, max_facts), self.schedule.distractors(rng, max_distractors)
        # Half the time the facts land in a pool that already holds something.
        if rng.random() < 0.5:
            episode.writes.append((self.text_chunk(rng), False))
        tool = True if rng.random() < 0.25 else None
        taught = [draw.write(tool=tool) for _ in range(n_facts)]
        if n_facts > 1 and rng.random() < 0.3:
            episode.writes.append((self.encode(" ".join(group[0].text for group in taught)), True))
        else:
            episode.writes += [(self.encode(group[0].text), True) for group in taught]
        for _ in range(n_distractors):
            unrelated = self.encode(draw.write(tool=tool)[0].text) if rng.random() < 0.5 else self.text_chunk(rng)
            episode.writes.append((unrelated, False))
        episode.targets += [self.qa_target(f.question, f.answer) for group in taught for f in group]
        if rng.random() < self.abstain_share:
            # Drawn only with a share, so that the default draws as before.
            close = self.near_miss_share and rng.random() < self.near_miss_share
            written = [f for group in taught for f in group]
            question = draw.near_miss(written, self.near_miss_forms) if close else None
            question = question or rng.choice(draw.write(tool=tool)).question
            episode.targets.append(self.qa_target(question, ABSTENTION))
        episode.targets.append(self.text_target(self.text_chunk(rng)))
        return episode
