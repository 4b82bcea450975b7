"""Load generator for a memagent server: N concurrent clients writing and reading.

Starts a server on loopback (random:tiny unless --model, in a temporary data directory) or
uses the one at --server, then runs two phases: every client injects --writes texts into its
own memory, then every client asks --reads questions of it. Prints p50/p99 latency and
throughput per phase.

    python bench/load_bench.py --clients 8 --writes 50 --reads 20
    python bench/load_bench.py --server 127.0.0.1:50051 --token $TOKEN --clients 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from memagent_server.process import ServerProcess

from memagent.client import AsyncClient


@contextmanager
def local_server(model: str, device: str):
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerProcess(Path(data_dir) / "data", Path(data_dir) / "server.log", "--device", device, model=model)
        try:
            yield server.address
        finally:
            server.stop()


async def _client(address: str, worker: int, args, latencies: dict[str, list[float]], barrier: Barrier) -> None:
    memory = f"bench-{worker}-{int(time.time())}"
    async with AsyncClient(address, args.token) as client:
        await client.create(memory)
        await _phase(
            args.writes,
            latencies["write"],
            lambda n: client.inject(
                memory, f"Note {n} from client {worker}: item {n} is stored on shelf {n % 7} in room {worker}."
            ),
        )
        await barrier.wait_for(args.clients)
        await _phase(
            args.reads,
            latencies["read"],
            lambda n: client.ask(memory, f"Where is item {n}?", max_new_tokens=args.max_new_tokens),
        )
        await client.delete(memory)


async def _phase(count: int, latencies: list[float], call) -> None:
    for n in range(count):
        start = time.perf_counter()
        await call(n)
        latencies.append(time.perf_counter() - start)


class Barrier:
    """All clients finish writing before any starts reading, so the phases are measured apart."""

    def __init__(self) -> None:
        self.arrived, self.event, self.started = 0, asyncio.Event(), 0.0

    async def wait_for(self, parties: int) -> None:
        self.arrived += 1
        if self.arrived == parties:
            self.started = time.perf_counter()
            self.event.set()
        await self.event.wait()


def _report(name: str, latencies: list[float], seconds: float) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{name:5s} {len(ms):6d} calls  p50 {statistics.median(ms):8.1f} ms  p99 {p99:8.1f} ms  "
        f"{len(ms) / seconds:8.1f} calls/s"
    )


async def run(address: str, args) -> None:
    latencies: dict[str, list[float]] = {"write": [], "read": []}
    barrier = Barrier()
    start = time.perf_counter()
    await asyncio.gather(*[_client(address, w, args, latencies, barrier) for w in range(args.clients)])
    end = time.perf_counter()
    read_start = barrier.started
    print(f"{args.clients} clients against {address}")
    _report("write", latencies["write"], read_start - start)
    _report("read", latencies["read"], end - read_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="host:port of a running server (default: start one on loopback)")
    parser.add_argument("--token")
    parser.add_argument("--model", default="random:tiny", help="for the server started here")
    parser.add_argument("--device", default="cpu", help="for the server started here")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--writes", type=int, default=25, help="per client (at most 10,000)")
    parser.add_argument("--reads", type=int, default=10, help="per client (at most 10,000)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    if max(args.writes, args.reads) > 10_000 or args.clients > 1024:
        parser.error("keep it bounded: at most 1024 clients and 10,000 writes or reads each")
    if args.server:
        asyncio.run(run(args.server, args))
        return
    with local_server(args.model, args.device) as address:
        asyncio.run(run(address, args))


if __name__ == "__main__":
    main()
