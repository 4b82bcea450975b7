"""How long work on one memory delays a short read on another: p50/p99 of a 1-token `ask` on
memory B alone, and while memory A takes a long prompt, one `Inject` of many texts, and a
`Forget` that rebuilds many entries. Side by side in one run, against one server (started on
loopback with --model, random:tiny unless given, or the one at --server). Each load on A
repeats until --asks asks on B have been timed, one after another.

    python bench/interference_bench.py
    python bench/interference_bench.py --model "" --asks 20   # the embedded default
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc
from load_bench import local_server

from memagent.client import AsyncClient
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc

QUESTION = "What is the cat called?"


def _note(i: int) -> str:
    return f"Note {i}: item {i} is stored on shelf {i % 7} in room {i % 5}."


async def _asks(client: AsyncClient, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        await client.ask("b", QUESTION, max_new_tokens=1)
        latencies.append(time.perf_counter() - start)
    return latencies


async def _while(load: Callable[[], Awaitable[object]], client: AsyncClient, asks: int) -> tuple[list[float], int]:
    """The asks' latencies while `load` runs again and again, and how many times it finished."""
    done, stop = 0, asyncio.Event()

    async def repeat() -> None:
        nonlocal done
        while not stop.is_set():
            await load()
            done += 1

    task = asyncio.create_task(repeat())
    await asyncio.sleep(0.2)  # the load is on the server before the first ask
    latencies = await _asks(client, asks)
    stop.set()
    await task
    return latencies, done


class Loads:
    """The work memory A takes, one call each."""

    def __init__(self, client: AsyncClient, stub, metadata, args):
        self.client, self.stub, self.metadata, self.args = client, stub, metadata, args
        self.prompt = "word " * args.prompt_tokens  # about one token per word
        self.kept: list[int] = []  # the forget memory's entries, oldest first
        self.written = 0

    async def prepare(self) -> None:
        await self.client.create("a")
        await self.client.create("forget")
        self.kept = [r.entry_id for r in await self._inject("forget", self.args.texts)]

    async def prompt_call(self) -> None:
        await self.client.complete("a", self.prompt, max_new_tokens=1)

    async def inject_call(self) -> None:
        await self._inject("a", self.args.texts)

    async def forget_call(self) -> None:
        """Forget the oldest entry (a rebuild from the others), then write one back, so every
        rebuild replays --texts - 1 entries."""
        await self.client.forget("forget", [self.kept.pop(0)])
        self.kept += [r.entry_id for r in await self._inject("forget", 1)]

    async def _inject(self, memory: str, count: int) -> list[pb.Receipt]:
        texts = [pb.Text(text=_note(self.written + i)) for i in range(count)]
        self.written += count
        response = await self.stub.Inject(pb.InjectRequest(memory_id=memory, texts=texts), metadata=self.metadata)
        return list(response.receipts)


def _row(name: str, latencies: list[float], alone_p99: float | None, done: int | None) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    ratio = f"{p99 / alone_p99:8.1f}x" if alone_p99 else f"{'':9s}"
    ops = f"{done:6d}" if done is not None else f"{'':6s}"
    return f"{name:32s} {len(ms):5d} {statistics.median(ms):9.1f} {p99:9.1f} {ratio} {ops}"


async def run(address: str, args) -> None:
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    async with AsyncClient(address, args.token) as client, grpc.aio.insecure_channel(address) as channel:
        loads = Loads(client, memagent_pb2_grpc.MemoryServiceStub(channel), metadata, args)
        await client.create("b")
        await client.inject("b", "Bob's cat is called Miso.")
        await loads.prepare()
        await _asks(client, 3)  # warm
        alone = await _asks(client, args.asks)
        rows = [("B alone", alone, None)]
        for name, load in (
            (f"A: {args.prompt_tokens:,}-token prompt", loads.prompt_call),
            (f"A: one Inject of {args.texts} texts", loads.inject_call),
            (f"A: Forget, rebuild {args.texts - 1} entries", loads.forget_call),
        ):
            rows.append((name, *await _while(load, client, args.asks)))
        for memory in ("a", "b", "forget"):
            await client.delete(memory)
    alone_p99 = sorted(alone)[min(len(alone) - 1, int(len(alone) * 0.99))] * 1000
    print(f"1-token ask on memory B against {address}")
    print(f"{'while':32s} {'asks':>5s} {'p50 ms':>9s} {'p99 ms':>9s} {'p99/alone':>9s} {'A done':>6s}")
    for name, latencies, done in rows:
        print(_row(name, latencies, alone_p99 if done is not None else None, done))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="host:port of a running server (default: start one on loopback)")
    parser.add_argument("--token")
    parser.add_argument("--model", default="random:tiny", help="for the server started here")
    parser.add_argument("--device", default="cpu", help="for the server started here")
    parser.add_argument("--asks", type=int, default=50, help="timed asks per row (at most 10,000)")
    parser.add_argument("--texts", type=int, default=100, help="texts per Inject, entries per Forget rebuild")
    parser.add_argument("--prompt-tokens", type=int, default=4000)
    args = parser.parse_args()
    if args.asks > 10_000 or not 2 <= args.texts <= 1024:
        parser.error("keep it bounded: at most 10,000 asks, 2 to 1024 texts")
    if args.server:
        asyncio.run(run(args.server, args))
        return
    with local_server(args.model, args.device) as address:
        asyncio.run(run(address, args))


if __name__ == "__main__":
    main()
