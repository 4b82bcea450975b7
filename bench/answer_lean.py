"""How much spans leaning toward the question's words (`memagent.answer_spans`, NEAR_BIAS) change
the default's answers, on facts written after the rule was made.

`bench/data/lean_facts.jsonl` holds 24 hand-written facts in the outside set's forms (chats,
JSON, sentences holding two facts, codes, names, log lines, lists, tables), written after the
lean was chosen (two of their misses led to the two rules on where a span starts, one to the
rule that a colon joins a compound only between digits). They are written as one stream with a
write of held-out prose between them and asked after k = 0, 5 and 20 later writes, with 24
never-told questions; once without the lean and once with it.

    python bench/answer_lean.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memagent import answer_spans, engines
from memagent.abstention import is_abstention
from memagent.evaluation.outside import never_told_questions, read_writes
from memagent.evaluation.recall import ask_all, is_correct, stream

FACTS = Path(__file__).parent / "data" / "lean_facts.jsonl"
KS = (0, 5, 20)


def measure(engine, near_bias: float, seed: int) -> dict[str, int]:
    """Told answers right and refused, never-told answered "I don't know.", with `near_bias`."""
    writes = stream(read_writes(FACTS, "lean"), [(q, None) for q in never_told_questions()[:24]], KS, gap=1, seed=seed)
    answer_spans.NEAR_BIAS = near_bias
    pool, counts = engine.pool("lean"), dict(right=0, refused=0, told=0, abstained=0, never_told=0)
    pool.reset()
    for done, text in enumerate(tqdm(writes.writes, desc=f"lean {near_bias:g}", unit="write"), start=1):
        pool.inject(text, progress=False)
        questions = writes.due.get(done, [])
        for question, reply in zip(questions, ask_all(pool, [q.text for q in questions]) if questions else []):
            if question.told:
                counts["told"] += 1
                counts["right"] += is_correct(reply, question.fact)
                counts["refused"] += is_abstention(reply)
            else:
                counts["never_told"] += 1
                counts["abstained"] += is_abstention(reply)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = engines.load()
    shipped = answer_spans.NEAR_BIAS
    print("| lean | told right | told refused | never-told answered \"I don't know.\" |")
    print("|---|---|---|---|")
    for bias in (0.0, shipped):
        c = measure(engine, bias, args.seed)
        print(f"| {bias:g} | {c['right']} of {c['told']} | {c['refused']} | {c['abstained']} of {c['never_told']} |")
    answer_spans.NEAR_BIAS = shipped


if __name__ == "__main__":
    main()
