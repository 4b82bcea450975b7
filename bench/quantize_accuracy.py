"""How much int8 reads cost in accuracy on the embedded default, against float32 reads.

Held-out prose perplexity (empty pool and after 5 unrelated writes) and, on a slice of the
held-out recall facts, recall and greedy answer agreement right after the fact is written
(k = 0) and after 5 unrelated writes (k = 5). Writes are the same in both models (int8 reads
write with the float weights), so the two answer from identical pools.

    python bench/quantize_accuracy.py --facts 30 --threads 1
"""

from __future__ import annotations

import argparse

import torch

import memagent
from memagent.evaluation.perplexity import held_out_chunks, perplexity
from memagent.evaluation.recall import ANSWER_TOKENS, held_out_facts, is_correct, unrelated_writes
from memagent.evaluation.report import PERPLEXITY_CHUNKS, PERPLEXITY_TOKENS

WRITES_AFTER = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=30)
    parser.add_argument("--chunks", type=int, default=PERPLEXITY_CHUNKS, help="prose chunks for perplexity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = {"float32": memagent.load(), "int8": memagent.load(quantize="int8")}

    chunks = held_out_chunks(engines["float32"].tokenizer, args.chunks, PERPLEXITY_TOKENS, args.seed)
    facts = held_out_facts(args.facts, args.seed + 1)
    rows = {name: {} for name in engines}
    answers = {name: {0: [], WRITES_AFTER: []} for name in engines}
    for name, engine in engines.items():
        empty, used = engine.pool("ppl-empty"), engine.pool("ppl-used")
        for text in unrelated_writes(facts[0], WRITES_AFTER, args.seed):
            used.inject(text, progress=False)
        rows[name]["ppl_empty"] = perplexity(engine, chunks, empty.pool, f"{name} perplexity, empty pool")
        rows[name]["ppl_used"] = perplexity(engine, chunks, used.pool, f"{name} perplexity, 5 writes")
        pool = engine.pool("recall")
        for i, fact in enumerate(facts):
            pool.reset()
            pool.inject(fact.text, progress=False)
            answers[name][0].append(pool.ask(fact.question, max_new_tokens=ANSWER_TOKENS))
            for text in unrelated_writes(fact, WRITES_AFTER, args.seed + i):
                pool.inject(text, progress=False)
            answers[name][WRITES_AFTER].append(pool.ask(fact.question, max_new_tokens=ANSWER_TOKENS))

    print(f"embedded default, {args.threads} thread(s); {len(chunks)} x {PERPLEXITY_TOKENS}-token prose chunks, {len(facts)} facts")
    print("| | float32 | int8 |")
    print("|---|---|---|")
    print(f"| held-out prose perplexity, empty pool | {rows['float32']['ppl_empty']:.2f} | {rows['int8']['ppl_empty']:.2f} |")
    print(f"| held-out prose perplexity, after 5 writes | {rows['float32']['ppl_used']:.2f} | {rows['int8']['ppl_used']:.2f} |")
    for k in (0, WRITES_AFTER):
        recall = {name: sum(is_correct(a, f) for a, f in zip(answers[name][k], facts)) for name in engines}
        same = sum(a == b for a, b in zip(answers["float32"][k], answers["int8"][k]))
        print(f"| recall, k = {k} | {recall['float32']}/{len(facts)} | {recall['int8']}/{len(facts)} |")
        print(f"| greedy answers identical to float32, k = {k} | | {same}/{len(facts)} |")


if __name__ == "__main__":
    main()
