"""`memagent eval`: every measurement of the default model, as a markdown table, JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from memagent import default_model, engines
from memagent.engine import Engine
from memagent.evaluation.perplexity import held_out_chunks, perplexity
from memagent.evaluation.recall import (
    Retention,
    held_out_facts,
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


def measure(engine: Engine, base: Engine, *, facts: int, distractors: list[int], seed: int) -> dict:
    sentences = held_out_facts(facts, seed, tool=False)
    retention = measure_retention(engine, held_out_facts(facts, seed + 1), distractors, seed)
    chunks = held_out_chunks(engine.tokenizer, PERPLEXITY_CHUNKS, PERPLEXITY_TOKENS, seed)
    used = engine.pool("eval-perplexity")
    for text in unrelated_writes(sentences[0], 5, seed):
        used.inject(text, progress=False)
    return {
        "facts": facts,
        "recall": {k: Retention.rate(v) for k, v in retention.recall.items()},
        "never_written": {k: Retention.rate(v) for k, v in retention.never_written.items()},
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
    lines = [
        f"Held-out facts (templates, phrasings, names and values training never saw), {r['facts']} per row; CPU, greedy `pool.ask`.",
        "",
        "| unrelated writes after the fact (k) | " + " | ".join(str(k) for k in r["recall"]) + " |",
        "|---|" + "---|" * len(r["recall"]),
        "| recall | " + " | ".join(pct(v) for v in r["recall"].values()) + " |",
        "| never-written control | " + " | ".join(pct(v) for v in r["never_written"].values()) + " |",
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


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(r["recall"])
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    ax.plot(ks, [100 * v for v in r["recall"].values()], "o-", label="memagent default: fact in memory")
    ax.plot(ks, [100 * v for v in r["never_written"].values()], "s--", label="memagent default: fact never written")
    ax.axhline(100 * r["base_fact_in_prompt"], color="gray", ls=":", label="base model, fact in prompt")
    ax.axhline(100 * r["base_no_fact"], color="black", ls="-.", lw=0.8, label="base model, no fact")
    ax.set(xlabel="unrelated writes after the fact (k)", ylabel="recall of held-out facts (%)", ylim=(-3, 103))
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
