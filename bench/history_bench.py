"""What a growing history costs: memagent's memory vs the same history in the base model's prompt.

After h = 1, 10, 100, 1000 writes (held-out facts and tool-output lines), ask one question
(cold: the first read after the last write) and measure, for memagent with its long-term
memory, memagent with its pool only, and the base model (SmolLM2-135M-Instruct without our
adapter) given all h facts in its prompt while they fit its context: time to first token,
decode tokens/s, seconds per write over the writes since the previous h (write cost as the
long-term store grows), the memory's bytes (pool + long-term store; for the base model the
request's memory) and the long-term tokens per layer (fullest layer).

    python bench/history_bench.py                 # CPU, writes docs/history_cost.{md,png}
    python bench/history_bench.py --device cuda
    python bench/history_bench.py --adapter /path/to/adapter --sizes 1,10,40
    python bench/history_bench.py --replot        # redraw docs/history_cost.png from its .md table
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from memagent import engines
from memagent import default_model
from memagent.engine import Engine
from memagent.model.generation import stream
from memagent.sampling import SamplingParams
from memagent.train.corpus import FactSampler

HISTORY_SIZES = (1, 10, 100, 1000)


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
        prefix = pool.prefix_kv.keys[0].shape[2] if pool.prefix_kv is not None else 0
        read = prefix + engine.model.long_term_slots(pool)  # the shared prefix and the long-term region
        memory = kv_bytes(engine, read + ids.shape[1] + new_tokens) + pool.memory.nbytes * pool.initialized
    return {
        "prompt_tokens": ids.shape[1],
        "ttft_s": times[0] - start,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]),
        "memory_mib": memory / 2**20,
    }


SYSTEMS = ("memagent + long-term", "memagent, pool only", "base, history in prompt")


def write_cost(engine: Engine, pool, facts) -> float:
    """Seconds per write over `facts`, written in order into `pool`."""
    start = time.perf_counter()
    for fact in facts:
        pool.inject(fact.text, progress=False)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(len(facts), 1)


def memory_cost(pool) -> dict:
    """Bytes the memory holds (pool + long-term store) and its long-term tokens per layer (fullest layer)."""
    long_term = pool.long_term
    return {
        "memory_mib": (pool.memory.nbytes + (long_term.nbytes if long_term is not None else 0)) / 2**20,
        "long_term_tokens": long_term.size if long_term is not None else 0,
    }


def run(device: str, new_tokens: int, adapter: str, sizes: tuple[int, ...]) -> list[dict]:
    ours = {
        SYSTEMS[0]: engines.load_default_engine(adapter, device=device),
        SYSTEMS[1]: engines.load_default_engine(adapter, device=device, long_term=False),
    }
    base = engines.load_base_engine(device=device)
    context = base.model.config.max_position_embeddings
    sampler = FactSampler("eval", seed=7)
    history = [sampler.fact(tool=i % 3 == 0) for i in range(max(sizes))]
    question = history[0].question
    ask_cost(base, base.question_prompt(question), base.pool("warm-up").pool, 4)
    pools = {system: engine.pool("bench") for system, engine in ours.items()}
    rows = []
    for h in sizes:
        for system, engine in ours.items():
            pool = pools[system]
            write_s = write_cost(engine, pool, history[pool.step : h])
            cost = ask_cost(engine, engine.question_prompt(question), pool.pool, new_tokens)
            rows.append({"h": h, "system": system, **cost, "write_s": write_s, **memory_cost(pool.pool)})
        prompt = base.question_prompt("\n".join(f.text for f in history[:h]) + "\n\n" + question)
        row = {"h": h, "system": SYSTEMS[2], "prompt_tokens": len(base.encode(prompt)), "write_s": None, "long_term_tokens": None}
        row.update(ttft_s=None, decode_tok_s=None, memory_mib=None)  # None: exceeds the context, not run
        if row["prompt_tokens"] + new_tokens <= context:
            row.update(ask_cost(base, prompt, base.pool("empty").pool, new_tokens))
        rows.append(row)
        for r in rows[-3:]:
            print(r, flush=True)
    return rows


COLUMNS = (
    ("h", "h", int),
    ("system", "system", str),
    ("prompt_tokens", "prompt tokens", int),
    ("ttft_s", "time to first token (s)", float),
    ("decode_tok_s", "decode (tokens/s)", float),
    ("write_s", "seconds per write (last stretch)", float),
    ("memory_mib", "memory (MiB)", float),
    ("long_term_tokens", "long-term tokens per layer", int),
)
FORMATS = {"ttft_s": "{:.3f}", "decode_tok_s": "{:.1f}", "write_s": "{:.4f}", "memory_mib": "{:.2f}"}
EXCEEDS = "exceeds the context"


def _cell(row: dict, key: str) -> str:
    value = row[key]
    if key == "ttft_s" and value is None:
        return EXCEEDS
    return "-" if value is None else FORMATS.get(key, "{}").format(value)


def table(rows: list[dict], device: str) -> str:
    lines = [
        f"Device: {device}. One question after h writes (cold: the first read after the last write); "
        "decode speed over the answer's tokens; seconds per write over the writes since the previous h. "
        "Memory: memagent's pool + long-term store; for the base model the request's memory "
        "(CUDA: peak allocated; CPU: key/value cache of prompt and answer).",
        "",
        "| " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(r, key) for key, _, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rows_from_table(text: str) -> list[dict]:
    """The rows of a table written by `table`."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(COLUMNS) or not cells[0].isdigit():
            continue
        rows.append({key: None if cell in ("-", EXCEEDS) else kind(cell) for (key, _, kind), cell in zip(COLUMNS, cells)})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """One panel per cost against h (log x); every y axis starts at 0, so a flat line reads as flat.
    A system's line stops where it was not measured (the base model past its context)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [key for key, _, kind in COLUMNS[3:]]
    labels = dict((key, label) for key, label, _ in COLUMNS)
    sizes = sorted({r["h"] for r in rows})
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.3), dpi=120)
    for ax, key in zip(axes, metrics):
        for system in dict.fromkeys(r["system"] for r in rows):
            mine = [r for r in rows if r["system"] == system and r[key] is not None]
            if mine:
                ax.plot([r["h"] for r in mine], [r[key] for r in mine], "o-", label=system)
        ax.set(xscale="log", xlabel="writes in the history (h)", ylabel=labels[key])
        ax.set_ylim(0, 1.1 * max((r[key] for r in rows if r[key] is not None), default=1) or 1)
        ax.set_xticks(sizes, [str(h) for h in sizes])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(h) for h in text.split(","))
    if not sizes or min(sizes) < 1 or list(sizes) != sorted(set(sizes)):
        raise argparse.ArgumentTypeError(f"--sizes wants increasing positive integers, got {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--adapter", default=str(default_model.ADAPTER_DIR), help="adapter folder (default: the shipped one)")
    parser.add_argument("--sizes", type=_sizes, default=HISTORY_SIZES, help="history sizes h, comma-separated (default 1,10,100,1000)")
    parser.add_argument("--replot", action="store_true", help="redraw OUT/history_cost.png from OUT/history_cost.md")
    args = parser.parse_args()
    out = Path(args.out)
    if args.replot:
        rows = rows_from_table((out / "history_cost.md").read_text())
        if not rows:
            raise SystemExit(f"{out / 'history_cost.md'} holds no table of this bench's columns; rerun the bench")
        plot(rows, out / "history_cost.png")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.device, args.new_tokens, args.adapter, args.sizes)
    out.mkdir(parents=True, exist_ok=True)
    label = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    (out / "history_cost.md").write_text(table(rows, label))
    plot(rows, out / "history_cost.png")
    print(table(rows, label))


if __name__ == "__main__":
    main()
