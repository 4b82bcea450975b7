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
    fact_stream,
    held_out_facts,
    measure_stream,
    outside_stream,
    prompt_recall,
    recall_at_zero,
    told_and_never_told,
    unrelated_writes,
)

SHORT_WRITE_TOKENS = 16
PERPLEXITY_CHUNKS, PERPLEXITY_TOKENS = 24, 128
COMMAND = "memagent eval"
# MemoryLLM-8B's recall on its own data after k unrelated writes (Wang et al., 2024): the anchor.
PAPER = {0: 0.66, 20: 0.37, 60: 0.18}
PAPER_LABEL = "MemoryLLM-8B (paper, its own data)"


def short_tool_facts(engine: Engine, n: int, seed: int):
    """Held-out tool-output lines of under 16 tokens."""
    pool = held_out_facts(4 * n, seed, tool=True)
    return [f for f in pool if len(engine.encode(f.text)) < SHORT_WRITE_TOKENS][:n]


def rates(outcomes: dict[int, list[bool]]) -> dict[int, float]:
    return {k: Retention.rate(outcomes[k]) for k in sorted(outcomes)}


def counts(outcomes: dict[int, list[bool]]) -> dict[int, int]:
    return {k: len(outcomes[k]) for k in sorted(outcomes)}


def measure(
    engine: Engine, short_term: Engine | None, base: Engine, *, facts: int, distractors: list[int], gap: int, seed: int
) -> dict:
    """Every measurement; `short_term`: the same adapter without its long-term memory (None: it has none)."""
    sentences = held_out_facts(facts, seed, tool=False)
    told, never_told = told_and_never_told(facts, seed + 1)
    facts_stream = fact_stream(told, never_told, distractors, gap=gap, seed=seed)
    retention = measure_stream(engine, facts_stream, "retention", grounded=True)
    without = measure_stream(short_term, facts_stream, "retention, no long-term memory") if short_term else None
    outside = measure_stream(
        engine,
        outside_stream(outside_writes(), never_told_questions(), distractors, gap=gap, seed=seed),
        "outside set",
        grounded=True,
    )
    chunks = held_out_chunks(engine.tokenizer, PERPLEXITY_CHUNKS, PERPLEXITY_TOKENS, seed)
    used = engine.pool("eval-perplexity")
    for text in unrelated_writes(sentences[0], 5, seed):
        used.inject(text, progress=False)
    return {
        "facts": facts,
        "gap": gap,
        "recall": rates(retention.recall),
        **({"recall_no_long_term": rates(without.recall)} if without else {}),
        "never_written": rates(retention.never_written),
        "never_written_abstained": rates(retention.abstained),
        "never_told_n": counts(retention.abstained),
        "refused": rates(retention.refused),
        "outside_facts": len(outside.recall[min(distractors)]),
        "outside_never_told": len(never_told_questions()),
        "outside_never_told_n": counts(outside.abstained),
        "outside_recall": rates(outside.recall),
        "outside_refused": rates(outside.refused),
        "outside_abstained": rates(outside.abstained),
        "grounded_recall": rates(retention.grounded.recall),
        "grounded_refused": rates(retention.grounded.refused),
        "grounded_abstained": rates(retention.grounded.abstained),
        "outside_grounded_recall": rates(outside.grounded.recall),
        "outside_grounded_refused": rates(outside.grounded.refused),
        "outside_grounded_abstained": rates(outside.grounded.abstained),
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
    ks = [int(k) for k in r["recall"]]
    stream = (
        f" Each set is written as one stream, {r['gap']} unrelated write(s) of held-out prose between"
        " consecutive facts; every write after a fact counts in its k, later facts included."
        if "gap" in r
        else ""
    )
    outside = (
        f" Outside set: {r['outside_facts']} hand-written facts per row and {r['outside_never_told']}"
        " never-told questions, each asked at one k."
        if "outside_facts" in r
        else ""
    )
    never = " Never-told questions: one per fact, asked at one k (cycling over the ks)." if "never_told_n" in r else ""
    paper = [pct(PAPER[k]) if k in PAPER else "–" for k in ks]
    lines = [
        f"Held-out facts (templates, phrasings, names and values training never saw), {r['facts']} per row;"
        " CPU, greedy `pool.ask`." + stream + never + outside,
        "",
        "| writes after the fact (k) | " + " | ".join(str(k) for k in ks) + " |",
        "|---|" + "---|" * len(ks),
        *_rows(r, pct),
        f"| {PAPER_LABEL} [^paper] | " + " | ".join(paper) + " |",
        "",
        f"[^paper]: and {pct(PAPER[60])} after 60 (MemoryLLM, Wang et al., 2024); its data, not ours.",
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


# (key, label); results files from before a row existed lack its key.
ROWS = [
    ("recall", "recall"),
    ("recall_no_long_term", "recall without the long-term memory"),
    ("refused", "told facts answered \"I don't know.\""),
    ("never_written", "never-told control, right by chance"),
    ("never_written_abstained", "never-told control answered \"I don't know.\""),
    ("outside_recall", "outside set: recall"),
    ("outside_refused", "outside set: told facts answered \"I don't know.\""),
    ("outside_abstained", "outside set: never-told questions answered \"I don't know.\""),
    ("grounded_recall", "grounded ask: recall"),
    ("grounded_refused", "grounded ask: told facts answered \"I don't know.\""),
    ("grounded_abstained", "grounded ask: never-told control answered \"I don't know.\""),
    ("outside_grounded_recall", "grounded ask, outside set: recall"),
    ("outside_grounded_refused", "grounded ask, outside set: told facts answered \"I don't know.\""),
    ("outside_grounded_abstained", "grounded ask, outside set: never-told questions answered \"I don't know.\""),
]


def by_k(series: dict) -> dict[int, float]:
    """A per-k series with int keys (JSON gives strings)."""
    return {int(k): v for k, v in series.items()}


def _rows(r: dict, pct) -> list[str]:
    """A row per series present; "–" where it has no value for a k (a never-told question at every k
    needs as many facts as ks)."""
    ks, rows = by_k(r["recall"]), []
    for key, label in ROWS:
        if key in r:
            cells = by_k(r[key])
            rows.append("| " + label + " | " + " | ".join(pct(cells[k]) if k in cells else "–" for k in ks) + " |")
    return rows


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion measured on n trials (sound near 0 and 1,
    where the normal approximation runs past the [0, 1] bounds)."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (rate * (1 - rate) / n + z * z / (4 * n * n)) ** 0.5
    return centre - half, centre + half


def plot(r: dict, path: Path) -> None:
    """Recall against k with 95% intervals; the paper's anchor points as markers; the legend sits
    below the axes, so it covers no point. The measured ks sit evenly spaced (0, 1 and 200 all
    readable); a k between two of them (the paper's 60) sits between, on a log(1 + k) scale."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, ks = r["facts"], [int(k) for k in r["recall"]]
    at = lambda k: np.interp(np.log1p(k), np.log1p(ks), np.arange(len(ks)))

    def percent_with_errors(rates, sizes):
        low, high = zip(*(wilson_interval(v, m) for v, m in zip(rates, sizes)))
        values = [100 * v for v in rates]
        # max(0, ...): at a rate of 0 or 1 the interval's near end is the rate itself, up to rounding.
        below = [max(0.0, v - 100 * lo) for v, lo in zip(values, low)]
        return values, [below, [max(0.0, 100 * hi - v) for v, hi in zip(values, high)]]

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    outside_n = r.get("outside_facts", n)
    # Questions per point: the facts, or (older results files lack the counts) one per fact and k.
    never_n, outside_never_n = by_k(r.get("never_told_n", {})), by_k(r.get("outside_never_told_n", {}))
    outside_never = r.get("outside_never_told", n)
    for series, style, label, counts, count in [
        ("recall", "o-", "memagent default: told fact, with long-term memory", {}, n),
        ("recall_no_long_term", "o--", "memagent default: told fact, without long-term memory", {}, n),
        ("never_written_abstained", "s:", "never-told question: \"I don't know.\"", never_n, n),
        ("outside_recall", "^-", f"outside set ({outside_n} hand-written facts): recall", {}, outside_n),
        ("outside_abstained", "v:", "outside set: never-told, \"I don't know.\"", outside_never_n, outside_never),
    ]:
        if series not in r:
            continue
        points = by_k(r[series])
        values, errors = percent_with_errors(list(points.values()), [counts.get(k, count) for k in points])
        ax.errorbar(at(list(points)), values, yerr=errors, fmt=style, capsize=3, label=label)
    paper = [k for k in PAPER if ks[0] <= k <= ks[-1]]
    ax.plot(at(paper), [100 * PAPER[k] for k in paper], "k*", ms=10, label=PAPER_LABEL)
    for key, style, color, label in [
        ("base_fact_in_prompt", ":", "gray", "base model, fact in prompt"),
        ("base_no_fact", "-.", "black", "base model, no fact"),
    ]:
        low, high = wilson_interval(r[key], n)
        ax.axhline(100 * r[key], color=color, ls=style, lw=0.9, label=label)
        ax.axhspan(100 * low, 100 * high, color=color, alpha=0.12, lw=0)
    ax.set(xlabel="writes after the fact (k)", ylabel="share of questions (%)", ylim=(-3, 103))
    ax.set_xticks(at(ks), [str(k) for k in ks])
    ax.grid(alpha=0.3)
    ax.set_title(f"{n} held-out generator facts per point; bars and bands: 95% Wilson intervals", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def replot(out: Path) -> Path:
    """Redraw out/eval_retention.png from out/eval_results.json, without measuring again."""
    path = out / "eval_retention.png"
    plot(json.loads((out / "eval_results.json").read_text()), path)
    return path


def evaluate_default(
    adapter: str | None, *, facts: int, distractors: list[int], gap: int, out: Path, seed: int
) -> dict:
    adapter = adapter or default_model.ADAPTER_DIR
    engine = engines.load_default_engine(adapter)
    short_term = engines.load_default_engine(adapter, long_term=False) if engine.model.config.long_term else None
    base = engines.load_base_engine()
    results = measure(engine, short_term, base, facts=facts, distractors=distractors, gap=gap, seed=seed)
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
