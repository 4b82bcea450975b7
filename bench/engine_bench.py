"""Engine speed for a named model shape with random weights (nothing to download).

Prints write tokens/s, time to first token with the memory's keys/values cold and warm,
decode tokens/s at batch 1 and 8, and peak memory.

    python bench/engine_bench.py --shape tiny
    python bench/engine_bench.py --shape smollm2-135m
    python bench/engine_bench.py --shape llama3-8b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time

import torch

from memagent.model.generation import stream
from memagent.model.memoryllm import MemoryLLM
from memagent.model.shapes import SHAPES, shape_config
from memagent.sampling import SamplingParams


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def needed_gib(config, dtype: torch.dtype, batches: list[int], cached_tokens: int) -> float:
    """Weights, the pool, its K/V prefix (shared by every row), and on CUDA one static decode
    step per batch size (its own prefix copy and token slots)."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in MemoryLLM(config).parameters())
    L, N, d = config.num_hidden_layers, config.num_memory_tokens, config.hidden_size
    kv_per_token = 2 * L * config.num_key_value_heads * config.head_dim
    elements = parameters + L * N * d + kv_per_token * (N + 1) * (1 + len(batches)) + kv_per_token * cached_tokens
    return elements * dtype.itemsize / 2**30


def available_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=list(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--write-tokens", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,8", help="decode batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cuda-graph", action="store_true", help="decode eagerly on CUDA")
    parser.add_argument(
        "--compile", action="store_true", help="compile one-row decode steps (MemoryLLM.compile_decode)"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    config = shape_config(args.shape)
    batches = [int(b) for b in args.batches.split(",")]
    need = needed_gib(config, dtype, batches, max(batches) * (args.prompt_tokens + args.new_tokens))
    if need > available_gib(device):
        parser.error(
            f"{args.shape} in {str(dtype).removeprefix('torch.')} needs about {need:.1f} GiB "
            f"(weights, pool, memory K/V, batch {max(batches)} cache); {device} has {available_gib(device):.1f} GiB free"
        )
    torch.manual_seed(0)
    model = MemoryLLM.from_random(config, device=device, dtype=dtype)
    model.compile_decode = args.compile
    vocab = config.vocab_size
    write_ids = torch.randint(0, vocab, (1, args.write_tokens), device=device)
    model.inject(write_ids)  # a first write fills the pool: reads now see all N tokens
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens), device=device)

    def first_token(cold: bool):
        """A request's first token, as served: on CUDA its prompt prefills in a captured graph."""
        params = SamplingParams(max_new_tokens=args.new_tokens)

        def run():
            if cold:
                model.pool.prefix_kv = None
            with contextlib.closing(stream(model, prompt, params, [], cuda_graph=not args.no_cuda_graph)) as tokens:
                next(tokens).item()

        return run

    def write():
        with torch.inference_mode():
            model.inject(write_ids, update=False)

    def decode(batch: int):
        ids = prompt.expand(batch, -1)
        options = dict(max_new_tokens=args.new_tokens, eos_token_id=[], cuda_graph=not args.no_cuda_graph)
        return lambda: model.generate(ids, **options)

    write_s = timed(write, device, args.repeats)
    cold_s = timed(first_token(cold=True), device, args.repeats)
    warm_s = timed(first_token(cold=False), device, args.repeats)
    rows = [
        ("shape", f"{args.shape} (N = {config.num_memory_tokens} memory tokens, K = {config.num_tokens})"),
        ("device / dtype", f"{device} / {str(dtype).removeprefix('torch.')}" + (", compiled steps" if args.compile else "")),
        (f"write {args.write_tokens} tokens", f"{write_s * 1000:.1f} ms ({args.write_tokens / write_s:,.0f} tokens/s)"),
        (f"first token, {args.prompt_tokens}-token prompt, memory K/V cold", f"{cold_s * 1000:.1f} ms"),
        (f"first token, {args.prompt_tokens}-token prompt, memory K/V warm", f"{warm_s * 1000:.1f} ms"),
    ]
    for batch in batches:
        total = timed(decode(batch), device, args.repeats)
        # Decode speed excludes the prefill, measured above as the warm first token.
        per_step = (total - warm_s) / (args.new_tokens - 1)
        rows.append((f"decode, batch {batch}", f"{1 / per_step:,.1f} steps/s ({batch / per_step:,.1f} tokens/s)"))
    rows.append(("peak memory", f"{peak_memory_gib(device):.2f} GiB"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
