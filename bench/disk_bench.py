"""Disk per memory after 1, 10 and 1,000 writes, and what opening it costs.

A memory's log is its record and a snapshot only a shortcut (README "Storage per memory"): a
memory keeps no snapshot until `--snapshot-every` writes would have to be replayed. "written"
is what the writes and their snapshots wrote in all (bytes passed to write(2), from
Linux's /proc/self/io).

    python bench/disk_bench.py                           # random:tiny, 1, 10 and 1,000 writes
    python bench/disk_bench.py --model "" --writes 1,10,70   # the embedded default
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import memagent
from memagent.store import MemoryStore, NewText


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:tiny", help='"" for the embedded default')
    parser.add_argument("--writes", default="1,10,1000", help="comma-separated write counts")
    parser.add_argument("--snapshot-every", type=int, default=64)
    args = parser.parse_args()
    engine = memagent.load(args.model or None)
    print("| writes | disk bytes | written | pool bytes | s per write | s to open (snapshot + tail) |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as data_dir:
        store = MemoryStore(engine, data_dir, snapshot_every=args.snapshot_every)
        for n in (int(w) for w in args.writes.split(",")):
            memory_id = f"m{n}"
            store.create("t", memory_id)
            start, before = time.perf_counter(), bytes_written()
            for i in range(n):
                store.inject("t", memory_id, [NewText(f"Note {i}: the meeting with Ann moved to Tuesday at ten.")])
            per_write = (time.perf_counter() - start) / n
            store.close()
            written = bytes_written() - before
            info = store.get("t", memory_id)
            start = time.perf_counter()
            MemoryStore(engine, data_dir, snapshot_every=args.snapshot_every).export("t", memory_id)
            opened = time.perf_counter() - start
            print(
                f"| {n} | {info.disk_bytes:,} | {written:,} | {info.pool_bytes:,} | {per_write:.3f} | {opened:.2f} |",
                flush=True,
            )


def bytes_written() -> int:
    """Bytes this process has passed to write(2) so far (0 where the kernel does not say)."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("wchar:")), 0)


if __name__ == "__main__":
    main()
