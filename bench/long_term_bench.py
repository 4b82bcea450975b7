"""What an M+ memory's long-term store costs as it grows, and why it lives where it does.

1. Growth, on an M+ model (default random:tiny-mplus): after w writes, the long-term tokens per
   layer, the bytes the memory holds (pool plus long-term store; of them, the tokens that stay in
   host memory), its pool file on disk, and the time of one read (a 16-token prompt), unbounded
   and under a bound (`--bound`, as `memagent serve --max-long-term-tokens`).
2. Placement, at one layer of M+-8B's released shape (d = 4096, s = 256, M = 2560) in float32 on
   this CPU: scoring every key for a 64-token prompt, against gathering the M chosen tokens. A
   read scores all n keys but needs only M tokens: keys go beside the queries, tokens stay home.

    python bench/long_term_bench.py                       # both tables, markdown on stdout
    python bench/long_term_bench.py --writes 1 10 100 --bound 256 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

import memagent
from memagent.model.pool_file import pool_to_bytes


def _ms(run, repeat: int = 7) -> float:
    """The fastest of `repeat` runs: on a shared machine the others measure its neighbours."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


@torch.inference_mode()
def growth(model: str, writes: list[int], bound: int | None) -> None:
    engine = memagent.load(model, max_long_term_tokens=bound or 0)
    K = engine.model.config.num_tokens
    pool, done = engine.new_pool(), 0
    tokens = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 1000, (1, 16), generator=tokens)
    label = f"bound {bound}" if bound else "unbounded"
    for target in writes:
        for _ in range(target - done):
            engine.model.inject(torch.randint(3, 1000, (1, K), generator=tokens), pool=pool)
        done = target
        read = _ms(lambda: engine.model(prompt, pool=pool))
        lt = pool.long_term
        print(
            f"| {label} | {target:,} | {lt.size:,} | {pool.nbytes:,} | {lt.host_nbytes:,} | "
            f"{len(pool_to_bytes(pool, engine.fingerprint())):,} | {read:.1f} |",
            flush=True,
        )


@torch.inference_mode()
def placement(sizes: list[int], d: int = 4096, s: int = 256, M: int = 2560, T: int = 64) -> None:
    queries = torch.randn(T, s)
    chosen = torch.randperm(M)
    for n in sizes:
        keys, tokens = torch.randn(n, s), torch.randn(n, d)
        score = _ms(lambda: torch.sigmoid(queries @ keys.T).mean(0).topk(M))
        gather = _ms(lambda: tokens[chosen].contiguous())
        print(f"| {n:,} | {n * s * 4 / 2**20:.0f} | {score:.1f} | {M * d * 4 / 2**20:.0f} | {gather:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random:tiny-mplus")
    parser.add_argument("--writes", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--bound", type=int, default=1024, help="the bounded run's tokens per layer")
    parser.add_argument("--keys", type=int, nargs="+", default=[2560, 16384, 65536], help="store sizes to score")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    columns = ["store", "writes", "long-term tokens per layer", "bytes in memory", "of which tokens in host memory"]
    print("| " + " | ".join(columns + ["pool file bytes", "read ms"]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bound in (None, args.bound):
        growth(args.model, args.writes, bound)
    print()
    print("| stored tokens n | keys MiB | score all keys, ms | M tokens MiB | gather M tokens, ms |")
    print("|---:|---:|---:|---:|---:|")
    placement(args.keys)


if __name__ == "__main__":
    main()
