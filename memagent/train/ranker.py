"""Training the write ranker (`memagent.model.write_ranker`) of a trained model.

Each example is a question with its fact's write and look-alikes: up to 3 facts of other
relations about the same subject (for a person, half of them about another of that first name),
up to 2 whose answer is the name the question asks by (a person's first name, a city): what a
read about that subject recalls beside the answer, as writes that name it; and up to 2 facts
of other relations about others. The model is frozen; each text's states are
computed once, then the ranker's two maps learn, a softmax over each question's writes pushing
the right one up. Facts come from the training split (templates, names and values), a share in
the varied forms; the held-out split measures how often the right write ranks first.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from memagent.model.memoryllm import MemoryLLM
from memagent.model.write_ranker import STATE_BATCH, WriteRanker
from memagent.train.corpus import CITIES, FIRST_NAMES, RELATIONS, SURNAMES, Fact, FactSampler, told_of
from memagent.train.varied import VariedSampler


@dataclass
class RankerConfig:
    examples: int = 2800  # training questions
    held_out: int = 150  # evaluation questions, from the held-out split
    depth: int = 18  # layers whose states are read (of the default's 30)
    dim: int = 128
    steps: int = 1500
    lr: float = 1e-3
    varied_share: float = 0.3  # facts in the varied forms
    seed: int = 0


@dataclass(frozen=True)
class Example:
    question: str
    writes: list[str]  # the right one first


def _subject(fact: Fact) -> str:
    return fact.subject.split(":", 1)[1]


def _same_subject(sampler: FactSampler, fact: Fact, rng: random.Random) -> str | None:
    """A fact of another relation about `fact`'s subject, as written (a person half the time
    by another surname: the question names the first only); None for kinds with no other
    relation (or the user, who has no name in the text)."""
    kind = fact.subject.split(":")[0]
    others = [r for r, spec in RELATIONS.items() if spec["kind"] == kind and r != fact.relation]
    if not others or kind == "user" or fact.relation not in RELATIONS:
        return None
    other, subject = sampler.fact(rng.choice(others)), _subject(fact)
    if kind == "person" and rng.random() < 0.5:
        subject = f"{subject.split()[0]} {rng.choice(SURNAMES)}"
    return told_of(other, subject).text


def _naming_subject(sampler: FactSampler, fact: Fact, rng: random.Random, tries: int = 40) -> str | None:
    """A fact of another relation whose answer is the name `fact`'s question asks by (a
    person's first name, a city): "User: my friends know me as Greta." beside Greta Quinn's
    home. None for other subjects, or if no draw of `tries` has such an answer."""
    kind, subject = fact.subject.split(":", 1)
    if fact.relation not in RELATIONS or kind not in ("person", "city"):
        return None
    name, names = (subject.split()[0], FIRST_NAMES) if kind == "person" else (subject, CITIES)
    for _ in range(tries):
        other = sampler.fact()
        if other.relation != fact.relation and other.answer in names:
            return other.text.replace(other.answer, name)
    return None


def examples(split: str, count: int, config: RankerConfig, seed: int) -> list[Example]:
    rng = random.Random(seed)
    facts, varied = FactSampler(split, seed), VariedSampler(split, seed)

    def draw() -> Fact:
        return varied.facts()[0] if rng.random() < config.varied_share else facts.fact()

    out = []
    while len(out) < count:
        fact = draw()
        writes = [fact.text]
        writes += [w for w in (_same_subject(facts, fact, rng) for _ in range(3)) if w is not None]
        writes += [w for w in (_naming_subject(facts, fact, rng) for _ in range(2)) if w is not None]
        writes += [other.text for other in (draw() for _ in range(2)) if other.relation != fact.relation]
        if len(writes) > 1:
            out.append(Example(fact.question, writes))
    return out


class _States:
    """Examples as states: questions [E, d], writes [E, W, d] and which are real [E, W]."""

    def __init__(self, model: MemoryLLM, tokenizer, ranker: WriteRanker, batch: list[Example], progress: bool):
        texts = [e.question for e in batch] + [w for e in batch for w in e.writes]
        ids = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        starts = tqdm(range(0, len(ids), STATE_BATCH), desc="states", disable=not progress)
        states = torch.cat([ranker.states(model, ids[i : i + STATE_BATCH]) for i in starts])
        self.questions = states[: len(batch)]
        width = max(len(e.writes) for e in batch)
        self.writes = torch.zeros(len(batch), width, states.shape[1])
        self.real = torch.zeros(len(batch), width, dtype=torch.bool)
        at = len(batch)
        for row, example in enumerate(batch):
            n = len(example.writes)
            self.writes[row, :n], self.real[row, :n] = states[at : at + n], True
            at += n

    def scores(self, ranker: WriteRanker) -> torch.Tensor:
        return ranker(self.questions, self.writes).masked_fill(~self.real, float("-inf"))

    def first(self, ranker: WriteRanker) -> float:
        """The share of examples whose right write scores highest."""
        with torch.no_grad():
            return (self.scores(ranker).argmax(1) == 0).float().mean().item()


def train_ranker(
    model: MemoryLLM, tokenizer, config: RankerConfig | None = None, *, progress: bool = True
) -> WriteRanker:
    """A ranker for `model` (frozen), trained as the module says; prints held-out first-place share."""
    config = config or RankerConfig()
    torch.manual_seed(config.seed)
    start = time.monotonic()
    ranker = WriteRanker(model.config.hidden_size, config.depth, config.dim)
    train = _States(model, tokenizer, ranker, examples("train", config.examples, config, config.seed), progress)
    held_out = _States(model, tokenizer, ranker, examples("eval", config.held_out, config, config.seed + 1), progress)
    every = torch.cat([train.questions, train.writes[train.real]])
    ranker.mean.copy_(every.mean(0))
    ranker.std.copy_(every.std(0) + 1e-4)
    optimizer = torch.optim.AdamW(ranker.parameters(), lr=config.lr, weight_decay=1e-2)
    target = torch.zeros(len(train.questions), dtype=torch.long)  # the right write is each row's first
    for _ in tqdm(range(config.steps), desc="ranker", disable=not progress):
        loss = F.cross_entropy(train.scores(ranker), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    minutes = (time.monotonic() - start) / 60
    print(
        f"ranker: loss {loss.item():.3f}; right write first for {train.first(ranker):.1%} of training questions, "
        f"{held_out.first(ranker):.1%} of {len(held_out.questions)} held-out ones; {minutes:.1f} minutes",
        flush=True,
    )
    return ranker.eval()
