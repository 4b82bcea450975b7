"""Decoding for many memories at once: aggregate tokens/s of concurrent generations, each on its
own memory, against one batch of the same size on one memory (the best a single memory gets).

Engine: `--clients` threads, each streaming one generation from its own memory, against
`generate_batch` of `--clients` prompts on one memory, against the same generations one
after another, and against `--clients` threads streaming from one memory. Server (with
--server-too): `--clients` async clients, each completing on its own memory of a local
server, against the same calls one after another.

    python bench/batching_bench.py                      # the embedded default
    python bench/batching_bench.py --model random:tiny --server-too
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

import torch

import memagent
from memagent.sampling import SamplingParams

PROMPT = "Tell me about the project's deployment and who owns it."


def facts(i: int) -> str:
    return f"Project {i} deploys from branch release-{i}.{i + 3} and its owner is Dana Kowalczyk-{i}."


def engine_figures(engine, clients: int, params: SamplingParams) -> dict[str, float]:
    pools = [engine.pool(f"bench-{i}") for i in range(clients)]
    for i, pool in enumerate(pools):
        pool.inject(facts(i), progress=False)
    engine.pool("bench-warm").generate(PROMPT, params)  # first-call costs out of the way

    def timed(run) -> float:
        start = time.perf_counter()
        tokens = run()
        return tokens / (time.perf_counter() - start)

    def one_memory_batch() -> int:
        batch = engine.stream(pools[0].pool, [PROMPT] * clients, params)
        for _ in batch:
            pass
        return sum(u.completion_tokens for u in batch.usages)

    def many_memories(concurrently: bool, memories=pools) -> int:
        generations = [engine.generate(p.pool, PROMPT, params) for p in memories]

        def drain(g):
            for _ in g:
                pass

        if concurrently:
            threads = [threading.Thread(target=drain, args=(g,)) for g in generations]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for g in generations:
                drain(g)
        return sum(g.usage.completion_tokens for g in generations)

    return {
        f"one memory, batch of {clients}": timed(one_memory_batch),
        f"{clients} memories, concurrently": timed(lambda: many_memories(True)),
        f"{clients} requests on one memory, concurrently": timed(lambda: many_memories(True, pools[:1] * clients)),
        f"{clients} memories, one after another": timed(lambda: many_memories(False)),
    }


async def server_figures(address: str, clients: int, params: SamplingParams) -> dict[str, float]:
    from memagent.client import AsyncClient

    async with AsyncClient(address) as client:
        for i in range(clients):
            await client.create(f"bench-{i}")
            await client.inject(f"bench-{i}", facts(i))
        await client.complete("bench-0", PROMPT, params)

        async def run(concurrently: bool) -> float:
            start = time.perf_counter()
            calls = [client.complete(f"bench-{i}", PROMPT, params) for i in range(clients)]
            if concurrently:
                done = await asyncio.gather(*calls)
            else:
                done = [await c for c in calls]
            return sum(c.usage.completion_tokens for c in done) / (time.perf_counter() - start)

        return {
            f"server: {clients} memories, concurrently": await run(True),
            f"server: {clients} memories, one after another": await run(False),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="random:<shape> or a checkpoint (default: the embedded default)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--server-too", action="store_true", help="also through a local server")
    parser.add_argument(
        "--compile-decode", action="store_true", help="in process: one-row requests in compiled lane steps"
    )
    parser.add_argument("--quantize", choices=("int8",), help="in process: int8 reads (`memagent.load(quantize=...)`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Sampled with a seed: an answer that ends early would leave the batch with less work.
    params = SamplingParams(max_new_tokens=args.max_new_tokens, do_sample=True, seed=0)
    engine = memagent.load(args.model, quantize=args.quantize, compile_decode=args.compile_decode)
    engine.prepare_decode()
    figures = engine_figures(engine, args.clients, params)
    if args.server_too:
        from memagent_server.process import ServerProcess

        with tempfile.TemporaryDirectory() as folder:
            server = ServerProcess(Path(folder) / "data", Path(folder) / "server.log", model=args.model)
            try:
                figures |= asyncio.run(server_figures(server.address, args.clients, params))
            finally:
                server.stop()
    best = figures[f"one memory, batch of {args.clients}"]
    reads = ", ".join(["float32" if args.quantize is None else args.quantize] + ["compiled"] * args.compile_decode)
    print(f"| decode, {args.max_new_tokens} tokens each ({args.model or 'embedded default'}, {reads}, {args.threads} thread) "
          "| tokens/s | vs one batch |")
    print("|---|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value:.1f} | {value / best:.2f}x |")


if __name__ == "__main__":
    main()
