"""Training episodes: the writes a memory receives and the text it must then predict.

An episode is a pure function of (seed, step), so a resumed run sees exactly the episodes
it would have seen. Three objectives, as in the MemoryLLM paper:
- recall: write one or more facts (separately or as one paragraph), ask about each;
- retention: after the facts, k unrelated writes (other facts, general text), k growing
  with a schedule, so knowledge must survive the random drops of later writes;
- continuation: write a chunk of general text, predict the text that follows it.
Every read also predicts a plain chunk of general text, which keeps general ability.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from memagent.train.corpus import FactSampler, prose_tokens


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


class EpisodeMaker:
    def __init__(self, tokenizer, question_prompt, *, split="train", seed=0, schedule: Schedule | None = None, text_tokens=64):
        self.tokenizer = tokenizer
        self.question_prompt = question_prompt
        self.split = split
        self.seed = seed
        self.schedule = schedule or Schedule()
        self.text_tokens = text_tokens
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
        facts = FactSampler(self.split, seed=rng.randrange(2**32))
        episode = Episode()
        if rng.random() < 0.2:
            chunk = self.text_chunk(rng, 2 * self.text_tokens)
            episode.writes.append((chunk[: self.text_tokens], True))
            episode.targets.append(self.text_target(chunk[self.text_tokens :], prompt_tokens=1))
            return episode
        max_facts, max_distractors = self.schedule.at(step)
        n_facts, n_distractors = rng.randint(1, max_facts), rng.randint(0, max_distractors)
        # Half the time the facts land in a pool that already holds something.
        if rng.random() < 0.5:
            episode.writes.append((self.text_chunk(rng), False))
        pool_facts = facts.distinct(n_facts + n_distractors, tool=True if rng.random() < 0.25 else None)
        taught, others = pool_facts[:n_facts], pool_facts[n_facts:]
        if n_facts > 1 and rng.random() < 0.3:
            episode.writes.append((self.encode(" ".join(f.text for f in taught)), True))
        else:
            episode.writes += [(self.encode(f.text), True) for f in taught]
        for other in others:
            unrelated = self.encode(other.text) if rng.random() < 0.5 else self.text_chunk(rng)
            episode.writes.append((unrelated, False))
        episode.targets += [self.qa_target(f.question, f.answer) for f in taught]
        episode.targets.append(self.text_target(self.text_chunk(rng)))
        return episode
