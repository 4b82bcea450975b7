"""Questions about a subject the memory holds other facts about: the default's told answers and
its "I don't know." where the names of a never-told question are written.

The evaluation's never-told questions mostly name subjects no write holds, which the rule on
names answers; an agent is as often asked what it was not told about someone it knows ("What
is Bob's phone number?" where his email is written). For each first name the held-out facts
use three times (18 names a seed), two of its facts, of different relations, are written into
an empty memory with a held-out prose paragraph after each; then both are asked, and the third
relation, never written.

    python bench/known_subject.py --seeds 7,8,9
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

import torch
from tqdm.auto import tqdm

from memagent import engines
from memagent.abstention import is_abstention, names_in
from memagent.evaluation.recall import PROSE_CHARS, ask_all, is_correct
from memagent.train.corpus import Fact, FactSampler, general_paragraphs

NAMES = 18  # first names per seed
DRAWS = 3000  # held-out facts drawn to find them


def groups(seed: int) -> list[list[Fact]]:
    """Three facts of different relations and answers about each of NAMES first names."""
    sampler, by_name = FactSampler("eval", seed=seed), defaultdict(list)
    for _ in range(DRAWS):
        fact = sampler.fact()
        names = names_in(fact.question)
        if len(names) == 1 and all(f.relation != fact.relation and f.answer != fact.answer for f in by_name[names[0]]):
            by_name[names[0]].append(fact)
    return [facts[:3] for _, facts in sorted(by_name.items()) if len(facts) >= 3][:NAMES]


def measure(engine, seed: int) -> dict[str, int]:
    prose = [p[:PROSE_CHARS] for p in general_paragraphs("eval")]
    rng, counts = random.Random(seed), dict(right=0, refused=0, told=0, abstained=0, never_told=0)
    pool = engine.pool("known-subject")
    for first, second, never in tqdm(groups(seed), desc=f"seed {seed}", unit="name"):
        pool.reset()
        for text in (first.text, rng.choice(prose), second.text, rng.choice(prose)):
            pool.inject(text, progress=False)
        *told, unknown = ask_all(pool, [first.question, second.question, never.question])
        for fact, reply in zip((first, second), told):
            counts["right"] += is_correct(reply, fact)
            counts["refused"] += is_abstention(reply)
        counts["told"] += 2
        counts["never_told"] += 1
        counts["abstained"] += is_abstention(unknown)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="7,8,9", help="comma-separated seeds of the held-out facts")
    parser.add_argument("--adapter", default=None, help="an exported adapter folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = engines.load_default_engine(*([args.adapter] if args.adapter else []))
    print("| seed | told right | told refused | never-told answered \"I don't know.\" |")
    print("|---|---|---|---|")
    total = defaultdict(int)
    for seed in (int(s) for s in args.seeds.split(",")):
        counts = measure(engine, seed)
        for key, value in counts.items():
            total[key] += value
        _row(seed, counts)
    _row("all", total)


def _row(label, c: dict[str, int]) -> None:
    print(f"| {label} | {c['right']} of {c['told']} | {c['refused']} | {c['abstained']} of {c['never_told']} |")


if __name__ == "__main__":
    main()
