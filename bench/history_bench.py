"""What a growing history costs: memagent's memory vs the same history in the base model's prompt.

After h = 1, 10, 50, 200 written facts (held-out facts and tool-output lines), ask one
question and measure time to first token, decode speed and the memory the request holds.
memagent reads a fixed-size pool whatever h is; the base model (SmolLM2-135M-Instruct
without our adapter, what a user would otherwise run) gets all h facts in its prompt.

    python bench/history_bench.py                 # CPU, writes docs/history_cost.{md,png}
    python bench/history_bench.py --device cuda
    python bench/history_bench.py --replot        # redraw docs/history_cost.png from its .md table

Memory: on CUDA the peak allocated during the request; on CPU the bytes of the request's
state (memory pool and its keys/values, plus the key/value cache of prompt and answer).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from memagent import engines
from memagent.engine import Engine
from memagent.model.generation import stream
from memagent.sampling import SamplingParams
from memagent.train.corpus import FactSampler

HISTORY_SIZES = (1, 10, 50, 200)


def kv_bytes(engine: Engine, tokens: int) -> int:
    c = engine.model.config
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * tokens * engine.model.dtype.itemsize


def ask_cost(engine: Engine, prompt: str, pool, new_tokens: int) -> dict:
    """Seconds to the first token, decode tokens/s after it, and the request's memory in MiB."""
    device = engine.device
    ids = torch.tensor([engine.encode(prompt)], device=device)
    params = SamplingParams(new_tokens)
    pool.prefix_kv = None  # the first question after a write pays for the memory's keys/values
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    times = []
    for token in stream(engine.model, ids, params, pool=pool):
        token.item()
        times.append(time.perf_counter())
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated() - before
    else:
        memory = kv_bytes(engine, engine.model.config.prefix_length * pool.initialized + ids.shape[1] + new_tokens)
        memory += pool.memory.nbytes * pool.initialized
    return {
        "prompt_tokens": ids.shape[1],
        "ttft_s": times[0] - start,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
        "memory_mib": memory / 2**20,
    }


def run(device: str, new_tokens: int) -> list[dict]:
    ours = engines.load_default_engine(device=device)
    base = engines.load_base_engine(device=device)
    sampler = FactSampler("eval", seed=7)
    history = [sampler.fact(tool=i % 3 == 0) for i in range(max(HISTORY_SIZES))]
    question = history[0].question
    ask_cost(base, base.question_prompt(question), base.pool("warm-up").pool, 4)
    pool, rows = ours.pool("bench"), []
    for h in HISTORY_SIZES:
        for fact in history[pool.step : h]:
            pool.inject(fact.text, progress=False)
        in_prompt = "\n".join(f.text for f in history[:h]) + "\n\n" + question
        rows.append({"h": h, "system": "memagent", **ask_cost(ours, ours.question_prompt(question), pool.pool, new_tokens)})
        empty = base.pool("empty").pool
        rows.append({"h": h, "system": "base, history in prompt", **ask_cost(base, base.question_prompt(in_prompt), empty, new_tokens)})
        print(rows[-2], rows[-1], flush=True)
    return rows


def table(rows: list[dict], device: str) -> str:
    lines = [
        f"Device: {device}. One question after h writes; decode speed over the answer's tokens.",
        "",
        "| h | system | prompt tokens | time to first token (s) | decode (tokens/s) | memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['h']} | {r['system']} | {r['prompt_tokens']} | {r['ttft_s']:.3f} | {r['decode_tok_s']:.1f} | {r['memory_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def rows_from_table(text: str) -> list[dict]:
    """The rows of a table written by `table`."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            h, system, prompt, ttft, decode, memory = cells
            rows.append({"h": int(h), "system": system, "prompt_tokens": int(prompt), "ttft_s": float(ttft),
                         "decode_tok_s": float(decode), "memory_mib": float(memory)})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Three panels against h; every y axis starts at 0, so a flat line reads as flat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), dpi=120)
    metrics = [("ttft_s", "time to first token (s)"), ("decode_tok_s", "decode (tokens/s)"), ("memory_mib", "memory (MiB)")]
    for ax, (key, label) in zip(axes, metrics):
        for system in dict.fromkeys(r["system"] for r in rows):
            mine = [r for r in rows if r["system"] == system]
            ax.plot([r["h"] for r in mine], [r[key] for r in mine], "o-", label=system)
        ax.set(xscale="log", xlabel="writes in the history (h)", ylabel=label)
        ax.set_ylim(0, 1.1 * max(r[key] for r in rows))
        ax.set_xticks(HISTORY_SIZES, [str(h) for h in HISTORY_SIZES])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--replot", action="store_true", help="redraw OUT/history_cost.png from OUT/history_cost.md")
    args = parser.parse_args()
    out = Path(args.out)
    if args.replot:
        rows = rows_from_table((out / "history_cost.md").read_text())
        plot(rows, out / "history_cost.png")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    label = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    (out / "history_cost.md").write_text(table(rows, label))
    plot(rows, out / "history_cost.png")
    print(table(rows, label))


if __name__ == "__main__":
    main()
