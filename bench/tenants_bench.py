"""Many tenants on one server: does one tenant's flood leave room for another, and what do a
thousand memories cost?

Starts a server on loopback (random:tiny unless --model) with two tenants, then:
1. --memories memories get one short write each: the server's resident memory (RSS) and
   bytes on disk per memory;
2. tenant A opens --streams generations at once (each asking for many tokens) while tenant B
   writes --writes texts into its own memory: B's successes and p50/p99 latency, and how many
   of A's streams the server took or refused (RESOURCE_EXHAUSTED names the limit).

    python bench/tenants_bench.py
    python bench/tenants_bench.py --model ""        # the embedded default
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import psutil
from memagent_server.process import ServerProcess

from memagent.client import AsyncClient, ClientError

TOKENS = {"token-of-tenant-a-0123456789": "a", "token-of-tenant-b-0123456789": "b"}
A, B = list(TOKENS)


async def flood(address: str, streams: int, max_new_tokens: int) -> dict[str, int]:
    """Tenant A: `streams` generations at once, read slowly; counts what was taken and refused."""
    counts = {"taken": 0, "refused": 0}
    async with AsyncClient(address, A) as client:
        await client.create("flood")
        await client.inject("flood", "Tenant A keeps its notes here.")

        async def one() -> None:
            try:
                async for _ in client.generate("flood", "Notes", max_new_tokens=max_new_tokens):
                    await asyncio.sleep(0.05)  # a slow reader holds its stream open
                counts["taken"] += 1
            except ClientError as err:
                refused = err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                key = "refused" if refused else err.code.name
                counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*[one() for _ in range(streams)])
    return counts


async def writes(address: str, n: int, started: asyncio.Event) -> tuple[int, list[float]]:
    """Tenant B: `n` writes into its own memory while A floods; (successes, latencies)."""
    ok, latencies = 0, []
    async with AsyncClient(address, B) as client:
        await client.create("notes")
        await started.wait()
        for i in range(n):
            start = time.perf_counter()
            try:
                await client.inject("notes", f"Tenant B's note {i}: the build {i} passed.")
                ok += 1
            except ClientError as err:
                print(f"  B's write {i} failed: {err}")
            latencies.append(time.perf_counter() - start)
    return ok, latencies


async def flood_phase(address: str, args) -> None:
    started = asyncio.Event()

    async def flood_then_signal():
        task = asyncio.create_task(flood(address, args.streams, args.max_new_tokens))
        await asyncio.sleep(1.0)  # the streams are open
        started.set()
        return await task

    counts, (ok, latencies) = await asyncio.gather(flood_then_signal(), writes(address, args.writes, started))
    ms = sorted(x * 1000 for x in latencies)
    print(f"tenant A: {args.streams} streams at once -> {counts}")
    print(
        f"tenant B: {ok}/{args.writes} writes succeeded meanwhile; p50 {statistics.median(ms):.1f} ms, "
        f"p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.1f} ms"
    )


async def memories_phase(address: str, count: int) -> None:
    async with AsyncClient(address, B) as client:
        for i in range(count):
            await client.create(f"m{i}")
            await client.inject(f"m{i}", f"Memory {i} remembers that the meeting is in room {i}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:tiny", help='"" for the embedded default')
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--memories", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tokens = Path(folder) / "tokens.json"
        tokens.write_text(json.dumps({"tokens": TOKENS}))
        data = Path(folder) / "data"
        server = ServerProcess(data, Path(folder) / "server.log", model=args.model or None, tokens=tokens)
        try:
            process = psutil.Process(server.process.pid)
            before = process.memory_info().rss
            asyncio.run(memories_phase(server.address, args.memories))
            rss = process.memory_info().rss
            disk = sum(p.stat().st_size for p in (data / "b").rglob("*") if p.is_file())
            print(
                f"{args.memories} memories, one write each: server RSS {before / 2**20:.0f} MiB at start, "
                f"{rss / 2**20:.0f} MiB after ({(rss - before) / args.memories / 2**10:.1f} KiB per memory); "
                f"disk {disk / args.memories / 2**10:.1f} KiB per memory"
            )
            asyncio.run(flood_phase(server.address, args))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
