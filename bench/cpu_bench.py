"""The embedded default on the CPU against plain transformers, side by side in one run.

Decode tokens/s at batch 1 and 8 (float32 and int8 reads; at batch 1 also both in steps
compiled by inductor), plain transformers `generate` of the same base model with no memory
and with a prompt as long as the memory prefix (1 + N
tokens; with a long-term memory of whole writes, 1 + M: the recalled writes a read attends
instead of the pool), their ratio, the share of the memory-bandwidth floor each reaches (bytes one step
reads: weights plus the memory's keys/values, over the bandwidth of a large copy measured
here), and the first token after a write with the memory's keys/values cold (updated from the
previous version), cold and recomputed from scratch, warm, and updated by the write itself (as
`Engine.write` and the server's writes do: the time the write spent on it is shown too).
With whole writes a read makes its prefix from the writes it recalls, whose keys and values
reads keep (`memagent/model/recalled_kv.py`): the first token after a write, projecting it
(the model alone) and with its keys/values kept by the write (as `Engine.write` does: the time
the write spent on it is shown too), is shown beside the next read's (warm), with their ratios.

Configurations take turns, round after round, so a busy machine slows them alike; each figure
is the median over rounds. Times are the CPU time of the benchmark's thread (what it would take
on a core of its own; a shared machine still contends for memory bandwidth), or wall-clock
time with --wall.

    python bench/cpu_bench.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from memagent import default_model
from memagent.model import generation
from memagent.model.memoryllm import MemoryLLM
from memagent.model.quantized import Int8Linear, quantize
from memagent.model.write_memory import WriteMemory
from memagent.sampling import SamplingParams

PROMPT = "Question: what is the name of the project that Alice leads, and who works with her on it?"
WRITES = [
    "Alice leads the Harbor project. She works with Bob, who maintains its build system.",
    "The quarterly report is due on the fifth of March; Carol collects the figures.",
    "Dmitri prefers tea to coffee and takes the 8:15 train from Leeds every weekday.",
]


CLOCK = time.thread_time


class Clock:
    """A transformers streamer that notes when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(CLOCK())

    def end(self) -> None:
        pass


def step_times(times: list[float]) -> list[float]:
    """Gaps between consecutive new tokens (the first token's prefill excluded)."""
    return [b - a for a, b in zip(times[1:], times[2:])]


def memagent_decode(model: MemoryLLM, ids: torch.Tensor, new_tokens: int) -> list[float]:
    """Eager steps, or with the model's `compile_decode` its compiled static steps."""
    times = [CLOCK()]
    params = SamplingParams(max_new_tokens=new_tokens)
    static = model.compile_decode
    for _ in generation.stream(model, ids, params, eos_token_ids=(), pool=model.pool, cuda_graph=static):
        times.append(CLOCK())
    return step_times(times)


def transformers_decode(hf, ids: torch.Tensor, new_tokens: int) -> list[float]:
    clock = Clock()
    with torch.inference_mode():
        hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, streamer=clock, pad_token_id=hf.config.eos_token_id,
        )
    return step_times(clock.times)


def first_token(model: MemoryLLM, ids: torch.Tensor) -> float:
    start = CLOCK()
    with torch.inference_mode():
        cache = model.new_cache(model.pool, 1, ids.shape[1] + 1)
        model.lm_head(model.prefill(ids, torch.ones_like(ids), cache)[:, -1]).argmax(-1).item()
    return CLOCK() - start


def update_prefix(model: MemoryLLM) -> float:
    """What `Engine.refresh_reads` adds to a write: the keys/values reads attend, updated."""
    start = CLOCK()
    with torch.inference_mode():
        model.memory_prefix(model.pool)
    return CLOCK() - start


def keep_last_write(model: MemoryLLM) -> float:
    """What `Engine.refresh_reads` adds to a write of whole writes: the newest write's keys/values."""
    start = CLOCK()
    model.keep_last_write(model.pool)
    return CLOCK() - start


def read_prefix(model: MemoryLLM) -> tuple[int, int]:
    """Tokens a read's prefix holds per layer and the bytes of their keys/values."""
    c = model.config
    if isinstance(model.pool.long_term, WriteMemory):
        tokens = int(c.add_bos_embedding) + c.long_term_slots
        kv_heads, head_dim = c.num_key_value_heads, c.head_dim
        return tokens, 2 * c.num_hidden_layers * kv_heads * tokens * head_dim * model.dtype.itemsize
    prefix = model.memory_prefix(model.pool)
    return prefix.keys[0].shape[2], sum(t.nbytes for t in prefix.keys + prefix.values)


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write), the best of `repeats`."""
    source = torch.ones(int(gib * 2**30) // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        target.copy_(source)
        best = min(best, CLOCK() - start)
    return 2 * source.nbytes / best


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights one decode step streams: every linear layer's (int8 where quantized;
    the float weights an int8 layer keeps for writes are not read)."""
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    unread = {id(m.linear) for m in int8}
    total = sum(m.weight.numel() + 4 * m.weight.shape[0] for m in int8)  # int8 weights, a scale per row
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in unread]
    return total + sum(m.weight.numel() * m.weight.element_size() for m in linears)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of the thread's CPU time")
    args = parser.parse_args()
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model, tokenizer = default_model.load_default()
    for text in WRITES:
        model.inject(tokenizer(text, return_tensors="pt").input_ids)
    int8 = quantize(copy.deepcopy(model), "int8")
    int8_compiled = quantize(copy.deepcopy(model), "int8")
    int8_compiled.compile_decode = True
    compiled = copy.deepcopy(model)  # its decode steps compiled by inductor (`MemoryLLM.compile_decode`)
    compiled.compile_decode = True
    hf = AutoModelForCausalLM.from_pretrained(str(default_model.base_checkpoint()), dtype=torch.float32).eval()
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    P, memory_kv = read_prefix(model)
    long_prompt = torch.randint(100, model.config.vocab_size, (1, P))
    whole_writes = isinstance(model.pool.long_term, WriteMemory)

    memagent_bytes = lambda m: weight_bytes(m) + memory_kv
    runs = {  # name: (batch, run, bytes one step reads)
        "memagent float32, batch 1": (1, lambda: memagent_decode(model, prompt, args.new_tokens), memagent_bytes(model)),
        "memagent float32 compiled, batch 1": (
            1, lambda: memagent_decode(compiled, prompt, args.new_tokens), memagent_bytes(compiled)
        ),
        "memagent int8, batch 1": (1, lambda: memagent_decode(int8, prompt, args.new_tokens), memagent_bytes(int8)),
        "memagent int8 compiled, batch 1": (
            1, lambda: memagent_decode(int8_compiled, prompt, args.new_tokens), memagent_bytes(int8_compiled)
        ),
        "memagent float32, batch 8": (8, lambda: memagent_decode(model, prompt.expand(8, -1), args.new_tokens), memagent_bytes(model)),
        "memagent int8, batch 8": (8, lambda: memagent_decode(int8, prompt.expand(8, -1), args.new_tokens), memagent_bytes(int8)),
        "transformers, no memory, batch 1": (1, lambda: transformers_decode(hf, prompt, args.new_tokens), weight_bytes(hf)),
        "transformers, no memory, batch 8": (8, lambda: transformers_decode(hf, prompt.expand(8, -1), args.new_tokens), weight_bytes(hf)),
        f"transformers, {P}-token prompt, batch 1": (1, lambda: transformers_decode(hf, long_prompt, args.new_tokens), weight_bytes(hf) + memory_kv),
    }
    gaps: dict[str, list[float]] = {name: [] for name in runs}
    kinds = ("float32", "int8")
    moments = ("cold (updated)", "cold (recomputed)", "warm", "updated by the write", "the write's update")
    if whole_writes:
        moments = ("after the write", "warm", "kept by the write", "the write's keeping")
    cold = {f"{name}, {kind}": [] for name in kinds for kind in moments}
    for m in (compiled, int8_compiled):  # their compiles, once (about a minute each), before the rounds
        memagent_decode(m, prompt, args.new_tokens)
    for round_ in range(args.rounds):
        for name, (_, run, _) in runs.items():
            gaps[name] += run()
        for m in (compiled, int8_compiled):
            m.inject(tokenizer(WRITES[round_ % len(WRITES)], return_tensors="pt").input_ids)
        for name, m in (("float32", model), ("int8", int8)):
            write = tokenizer(WRITES[round_ % len(WRITES)], return_tensors="pt").input_ids
            m.inject(write)
            if whole_writes:
                cold[f"{name}, after the write"].append(first_token(m, prompt))
                cold[f"{name}, warm"].append(first_token(m, prompt))
                m.inject(write)
                cold[f"{name}, the write's keeping"].append(keep_last_write(m))
                cold[f"{name}, kept by the write"].append(first_token(m, prompt))
                continue
            cold[f"{name}, cold (updated)"].append(first_token(m, prompt))
            cold[f"{name}, warm"].append(first_token(m, prompt))
            m.inject(write)
            m.pool.prefix_kv = None
            cold[f"{name}, cold (recomputed)"].append(first_token(m, prompt))
            m.inject(write)
            cold[f"{name}, the write's update"].append(update_prefix(m))
            cold[f"{name}, updated by the write"].append(first_token(m, prompt))

    bandwidth = copy_bandwidth()
    rates = {name: batch / statistics.median(gaps[name]) for name, (batch, _, _) in runs.items()}
    base = {1: rates["transformers, no memory, batch 1"], 8: rates["transformers, no memory, batch 8"]}
    long_base = rates[f"transformers, {P}-token prompt, batch 1"]

    clock = "wall-clock" if args.wall else "thread CPU"
    print(f"embedded default (SmolLM2-135M + adapter, a {P}-token read prefix), {args.threads} thread(s), "
          f"{clock} time, {args.rounds} rounds of {args.new_tokens} new tokens; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print()
    print("| decode | tokens/s | vs transformers, no memory | vs transformers, "
          f"{P}-token prompt | bytes per step | share of the bandwidth floor |")
    print("|---|---|---|---|---|---|")
    for name, (batch, _, nbytes) in runs.items():
        floor = bandwidth / nbytes  # steps/s if a step did nothing but stream its bytes once
        versus_long = f"{rates[name] / long_base:.2f}x" if batch == 1 else ""
        print(f"| {name} | {rates[name]:.1f} | {rates[name] / base[batch]:.2f}x | {versus_long} | "
              f"{nbytes / 1e6:.0f} MB | {100 * rates[name] / batch / floor:.0f}% |")
    print()
    print(f"| first token after a write, {prompt.shape[1]}-token prompt | ms |")
    print("|---|---|")
    for name, times in cold.items():
        print(f"| {name} | {1000 * statistics.median(times):.0f} |")
    for name in kinds:
        for kind in ("after the write", "kept by the write") if whole_writes else ("cold (updated)", "updated by the write"):
            ratio = statistics.median(cold[f"{name}, {kind}"]) / statistics.median(cold[f"{name}, warm"])
            print(f"| {name}, {kind} / warm | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
