"""Can the default abstain without training? A decision rule on how the memory changes the answer.

For held-out facts: write the fact, then k unrelated writes; at k = 0 and 10 ask the fact's
question (told), another fact's question (control: never written, same kinds) and a question of
the outside never-told set. For each greedy answer record its per-token log-probabilities read
with the memory, with an empty memory, and with the memory under a question that names nothing
("What is it?"). A rule abstains when one feature falls below a threshold:

- gain: mean log-probability with the memory minus with an empty memory (`memagent.memory_gain`);
- confidence: mean log-probability with the memory;
- specificity: mean log-probability under the question minus under the question naming nothing.

The threshold is chosen on the first half of the facts (the most never-told questions answered
"I don't know." with at most 10% of told facts refused, at both k) and measured on the second.

    python bench/abstention_rule.py --facts 40 --out runs/abstention.json     # measure, then report
    python bench/abstention_rule.py --report runs/abstention.json             # report again
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memagent import engines
from memagent.evaluation.outside import never_told_questions
from memagent.evaluation.recall import ANSWER_TOKENS, held_out_facts, is_correct, unrelated_writes
from memagent.memory_gain import answer_logprobs

KS = (0, 10)
NAMELESS_QUESTION = "What is it?"
MAX_REFUSED = 0.10


def measure(facts: int, seed: int, out: Path) -> list[dict]:
    engine = engines.load()
    model, empty = engine.model, engine.new_pool()
    nameless = engine.encode(engine.question_prompt(NAMELESS_QUESTION))
    pool, never, rows = engine.pool("abstention"), never_told_questions(), []
    chosen = held_out_facts(facts, seed)

    def record(i: int, k: int, kind: str, question: str, truth: str) -> None:
        answer = pool.ask(question, max_new_tokens=ANSWER_TOKENS)
        prompt, ids = engine.encode(engine.question_prompt(question)), engine.encode(answer) or engine.encode(" ")
        logprobs = lambda p, q: answer_logprobs(model, p, q, ids).tolist()
        rows.append(dict(i=i, k=k, kind=kind, question=question, answer=answer, correct=bool(truth) and truth.lower() in answer.lower(),
                         memory=logprobs(pool.pool, prompt), empty=logprobs(empty, prompt), nameless=logprobs(pool.pool, nameless)))  # fmt: skip

    for i, fact in enumerate(tqdm(chosen, desc="facts", unit="fact")):
        control = chosen[(i + 1) % len(chosen)]
        pool.reset()
        pool.inject(fact.text, progress=False)
        writes = unrelated_writes(fact, max(KS), seed + i)
        for k in range(max(KS) + 1):
            if k:
                pool.inject(writes[k - 1], progress=False)
            if k in KS:
                record(i, k, "told", fact.question, fact.answer)
                record(i, k, "control", control.question, control.answer)
                record(i, k, "never", never[(i + k) % len(never)], "")
        out.write_text(json.dumps(rows))
    return rows


def features(row: dict) -> dict[str, float]:
    mean = lambda xs: sum(xs) / len(xs)
    memory = mean(row["memory"])
    return {"gain": memory - mean(row["empty"]), "confidence": memory, "specificity": memory - mean(row["nameless"])}


def outcome(rows: list[dict], name: str, threshold: float) -> dict[int, dict[str, float]]:
    """Per k: told facts refused, told facts answered right and kept, never-written questions refused."""
    result = {}
    for k in KS:
        told = [r for r in rows if r["k"] == k and r["kind"] == "told"]
        never = [r for r in rows if r["k"] == k and r["kind"] != "told"]
        refuses = lambda r: features(r)[name] < threshold
        result[k] = {
            "told_refused": sum(map(refuses, told)) / len(told),
            "told_right": sum(r["correct"] and not refuses(r) for r in told) / len(told),
            "never_abstained": sum(map(refuses, never)) / len(never),
        }
    return result


def choose(rows: list[dict], name: str) -> float:
    """The threshold that abstains most on never-written questions, refusing at most 10% of told facts at every k."""
    best, best_abstained = float("-inf"), -1.0
    for threshold in sorted({features(r)[name] for r in rows}):
        result = outcome(rows, name, threshold)
        if max(r["told_refused"] for r in result.values()) <= MAX_REFUSED:
            abstained = min(r["never_abstained"] for r in result.values())
            if abstained > best_abstained:
                best, best_abstained = threshold, abstained
    return best


def report(rows: list[dict]) -> str:
    facts = sorted({r["i"] for r in rows})
    first = set(facts[: len(facts) // 2])
    choosing, measuring = [r for r in rows if r["i"] in first], [r for r in rows if r["i"] not in first]
    pct = lambda x: f"{100 * x:.0f}%"
    without = {k: sum(r["correct"] for r in measuring if r["k"] == k and r["kind"] == "told") for k in KS}
    told = {k: sum(1 for r in measuring if r["k"] == k and r["kind"] == "told") for k in KS}
    lines = [
        f"Threshold chosen on {len(first)} facts, measured on the other {len(facts) - len(first)} "
        f"(each with a control and a never-told question, at k = {', '.join(map(str, KS))}).",
        "",
        "| rule: abstain when ... < threshold | threshold | " + " | ".join(
            f"k={k}: never-written answered \"I don't know.\" | k={k}: told refused | k={k}: told answered right" for k in KS) + " |",
        "|---|---|" + "---|---|---|" * len(KS),
        "| no rule | | " + " | ".join(f"0% | 0% | {pct(without[k] / told[k])}" for k in KS) + " |",
    ]  # fmt: skip
    for name in ("gain", "confidence", "specificity"):
        threshold = choose(choosing, name)
        result = outcome(measuring, name, threshold)
        cells = [f"{pct(result[k]['never_abstained'])} | {pct(result[k]['told_refused'])} | {pct(result[k]['told_right'])}" for k in KS]
        lines.append(f"| {name} | {threshold:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=40)
    parser.add_argument("--seed", type=int, default=778)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/abstention.json"), help="per-question records")
    parser.add_argument("--report", type=Path, default=None, help="report from these records, measuring nothing")
    args = parser.parse_args()
    if args.report:
        rows = json.loads(args.report.read_text())
    else:
        torch.set_num_threads(args.threads)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = measure(args.facts, args.seed, args.out)
    print(report(rows))


if __name__ == "__main__":
    main()
