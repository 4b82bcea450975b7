"""Throughput of the Ray Serve deployment with 1 and 2 replicas, on 16 memories.

Starts a local Ray cluster, deploys the memory service with each replica count in turn (a
fresh data directory each time) and drives it through the gRPC proxy with concurrent clients,
one memory per client: each client writes --writes texts, then asks --reads questions.
Prints requests per second for each phase and replica count, and how often a memory's lease
changed hands (routing stickiness).

    python bench/ray_bench.py --memories 16 --writes 20 --reads 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
from memagent_server import ray_app
from ray import serve

from memagent.client import Client
from memagent.store.lease import read_lease


def _run(address: str, memories: list[str], args) -> dict[str, float]:
    def phase(work) -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(len(memories)) as pool:
            list(pool.map(work, memories))
        return time.perf_counter() - start

    def write(memory: str) -> None:
        with Client(address, timeout=120) as client:
            for n in range(args.writes):
                client.inject(memory, f"Note {n} for {memory}: item {n} is on shelf {n % 7}.")

    def read(memory: str) -> None:
        with Client(address, timeout=120) as client:
            for n in range(args.reads):
                client.ask(memory, f"Where is item {n}?", max_new_tokens=args.max_new_tokens)

    with Client(address, timeout=120) as client:
        for memory in memories:
            client.create(memory)
    return {
        "writes/s": len(memories) * args.writes / phase(write),
        "asks/s": len(memories) * args.reads / phase(read),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--memories", type=int, default=16)
    p.add_argument("--writes", type=int, default=20, help="texts each memory is told")
    p.add_argument("--reads", type=int, default=5, help="questions each memory is asked")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    args = p.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as scratch:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
        port = ray_app._free_port()
        memories = [f"bench-{i:02d}" for i in range(args.memories)]
        print(f"{args.memories} memories, {args.writes} writes + {args.reads} asks each, model {args.model}")
        print("| replicas | writes/s | asks/s | lease moves |")
        print("|---|---|---|---|")
        for replicas in args.replicas:
            data_dir = Path(scratch) / f"data-{replicas}"
            config = ray_app.RayConfig(
                data_dir=str(data_dir),
                model=args.model,
                replicas=replicas,
                resident=args.memories,
                cpus_per_replica=args.cpus / max(args.replicas),
            )
            if replicas == args.replicas[0]:
                ray_app.start(config, port)
            else:
                serve.run(ray_app.build(config), name=ray_app.APP_NAME, route_prefix=ray_app.ROUTE_PREFIX)
            rates = _run(f"127.0.0.1:{port}", memories, args)
            moves = sum(read_lease(data_dir / "default" / m)["epoch"] - 1 for m in memories)
            print(f"| {replicas} | {rates['writes/s']:.1f} | {rates['asks/s']:.1f} | {moves} |", flush=True)
            serve.delete(ray_app.APP_NAME)
        ray_app.stop()


if __name__ == "__main__":
    main()
