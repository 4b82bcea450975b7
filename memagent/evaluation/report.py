"""`memagent eval`: every measurement of the default model, as a markdown table, JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from memagent import default_model, engines
from memagent.engine import Engine
from memagent.evaluation.outside import never_told_questions, outside_writes
from memagent.evaluation.perplexity import held_out_chunks, perplexity
from memagent.evaluation.recall import (
    Retention,
    held_out_facts,
    measure_outside,
    measure_retention,
    prompt_recall,
    recall_at_zero,
    unrelated_writes,
)

SHORT_WRITE_TOKENS = 16
PERPLEXITY_CHUNKS, PERPLEXITY_TOKENS = 24, 128
COMMAND = "memagent eval"


def short_tool_facts(engine: Engine, n: int, seed: int):
    """Held-out tool-output lines of under 16 tokens."""
    pool = held_out_facts(4 * n, seed, tool=True)
    return [f for f in pool if len(engine.encode(f.text)) < SHORT_WRITE_TOKENS][:n]


def rates(outcomes: dict[int, list[bool]]) -> dict[int, float]:
    return {k: Retention.rate(v) for k, v in outcomes.items()}


def measure(engine: Engine, base: Engine, *, facts: int, distractors: list[int], seed: int) -> dict:
    sentences = held_out_facts(facts, seed, tool=False)
    retention = measure_retention(engine, held_out_facts(facts, seed + 1), distractors, seed)
    outside = measure_outside(engine, outside_writes(), never_told_questions(), distractors, seed)
    chunks = held_out_chunks(engine.tokenizer, PERPLEXITY_CHUNKS, PERPLEXITY_TOKENS, seed)
    used = engine.pool("eval-perplexity")
    for text in unrelated_writes(sentences[0], 5, seed):
        used.inject(text, progress=False)
    return {
        "facts": facts,
        "recall": rates(retention.recall),
        "never_written": rates(retention.never_written),
        "never_written_abstained": rates(retention.abstained),
        "refused": rates(retention.refused),
        "outside_facts": len(next(iter(outside.recall.values()))),
        "outside_never_told": len(next(iter(outside.abstained.values()))),
        "outside_recall": rates(outside.recall),
        "outside_refused": rates(outside.refused),
        "outside_abstained": rates(outside.abstained),
        "base_fact_in_prompt": prompt_recall(base, sentences, with_fact=True),
        "base_no_fact": prompt_recall(base, sentences, with_fact=False),
        "sentence_recall": recall_at_zero(engine, sentences, "sentence writes"),
        "short_tool_recall": recall_at_zero(engine, short_tool_facts(engine, facts, seed), "short tool-output writes"),
        "ppl_base": perplexity(base, chunks, base.pool("eval-perplexity").pool, "perplexity, base"),
        "ppl_empty_pool": perplexity(engine, chunks, engine.pool("eval-perplexity-empty").pool, "perplexity, empty pool"),
        "ppl_used_pool": perplexity(engine, chunks, used.pool, "perplexity, after 5 writes"),
    }


def table(r: dict) -> str:
    pct = lambda x: f"{100 * x:.0f}%"
    outside = (
        f" Outside set: {r['outside_facts']} hand-written facts and {r['outside_never_told']} never-told questions per row."
        if "outside_facts" in r
        else ""
    )
    lines = [
        f"Held-out facts (templates, phrasings, names and values training never saw), {r['facts']} per row; CPU, greedy `pool.ask`."
        + outside,
        "",
        "| unrelated writes after the fact (k) | " + " | ".join(str(k) for k in r["recall"]) + " |",
        "|---|" + "---|" * len(r["recall"]),
        "| recall | " + " | ".join(pct(v) for v in r["recall"].values()) + " |",
        "| never-written control | " + " | ".join(pct(v) for v in r["never_written"].values()) + " |",
        *_rows(r, pct),
        "",
        "| control / measurement | result |",
        "|---|---|",
        f"| base SmolLM2-135M-Instruct, fact in its prompt (upper bound) | {pct(r['base_fact_in_prompt'])} |",
        f"| base SmolLM2-135M-Instruct, fact nowhere | {pct(r['base_no_fact'])} |",
        f"| recall of a one-sentence write (k = 0) | {pct(r['sentence_recall'])} |",
        f"| recall of a one-line tool output, under {SHORT_WRITE_TOKENS} tokens (k = 0) | {pct(r['short_tool_recall'])} |",
        f"| held-out prose perplexity, base | {r['ppl_base']:.2f} |",
        f"| held-out prose perplexity, memagent, empty pool | {r['ppl_empty_pool']:.2f} ({r['ppl_empty_pool'] / r['ppl_base'] - 1:+.1%}) |",
        f"| held-out prose perplexity, memagent, after 5 unrelated writes | {r['ppl_used_pool']:.2f} ({r['ppl_used_pool'] / r['ppl_base'] - 1:+.1%}) |",
    ]
    return "\n".join(lines) + "\n"


# Rows added with the outside set and abstention (older results files lack them).
ROWS = [
    ("never_written_abstained", "never-written control answered \"I don't know.\""),
    ("refused", "told facts answered \"I don't know.\""),
    ("outside_recall", "outside set: recall"),
    ("outside_refused", "outside set: told facts answered \"I don't know.\""),
    ("outside_abstained", "outside set: never-told questions answered \"I don't know.\""),
]


def _rows(r: dict, pct) -> list[str]:
    return ["| " + label + " | " + " | ".join(pct(v) for v in r[key].values()) + " |" for key, label in ROWS if key in r]


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion measured on n trials (sound near 0 and 1,
    where the normal approximation runs past the [0, 1] bounds)."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (rate * (1 - rate) / n + z * z / (4 * n * n)) ** 0.5
    return centre - half, centre + half


def plot(r: dict, path: Path) -> None:
    """Recall against k with 95% intervals (n = facts per point); the legend sits below the axes,
    so it covers no point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, ks = r["facts"], [int(k) for k in r["recall"]]

    def percent_with_errors(rates, n):
        low, high = zip(*(wilson_interval(v, n) for v in rates))
        values = [100 * v for v in rates]
        return values, [[v - 100 * lo for v, lo in zip(values, low)], [100 * hi - v for v, hi in zip(values, high)]]

    fig, ax = plt.subplots(figsize=(6, 4.6), dpi=120)
    outside_n, never_n = r.get("outside_facts", n), r.get("outside_never_told", n)
    for series, style, label, count in [
        ("recall", "o-", "memagent default: fact in memory", n),
        ("never_written", "s--", "memagent default: fact never written", n),
        ("outside_recall", "^-", f"outside set ({outside_n} hand-written facts): recall", outside_n),
        ("outside_abstained", "v:", f"outside set: never-told, \"I don't know.\" (n = {never_n})", never_n),
    ]:
        if series not in r:
            continue
        values, errors = percent_with_errors(list(r[series].values()), count)
        ax.errorbar(ks, values, yerr=errors, fmt=style, capsize=3, label=label)
    for key, style, color, label in [
        ("base_fact_in_prompt", ":", "gray", "base model, fact in prompt"),
        ("base_no_fact", "-.", "black", "base model, no fact"),
    ]:
        low, high = wilson_interval(r[key], n)
        ax.axhline(100 * r[key], color=color, ls=style, lw=0.9, label=label)
        ax.axhspan(100 * low, 100 * high, color=color, alpha=0.12, lw=0)
    ax.set(xlabel="unrelated writes after the fact (k)", ylabel="share of questions (%)", ylim=(-3, 103))
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.set_title(f"{n} held-out generator facts per point; bars and bands: 95% Wilson intervals", fontsize=8)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def replot(out: Path) -> Path:
    """Redraw out/eval_retention.png from out/eval_results.json, without measuring again."""
    path = out / "eval_retention.png"
    plot(json.loads((out / "eval_results.json").read_text()), path)
    return path


def evaluate_default(adapter: str | None, *, facts: int, distractors: list[int], out: Path, seed: int) -> dict:
    engine = engines.load_default_engine(adapter or default_model.ADAPTER_DIR)
    base = engines.load_base_engine()
    results = measure(engine, base, facts=facts, distractors=distractors, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "eval_results.md").write_text(table(results))
    plot(results, out / "eval_retention.png")
    print(table(results))
    print(f"wrote {out / 'eval_results.md'}, {out / 'eval_results.json'}, {out / 'eval_retention.png'}")
    return results


if __name__ == "__main__":  # python -m memagent.evaluation.report docs: redraw the plot from the JSON
    import sys

    print(f"wrote {replot(Path(sys.argv[1] if len(sys.argv) > 1 else 'docs'))}")
