"""`memagent repair`: salvage a damaged memory's log, offline, and report what was kept.

It works on the data directory with the server stopped (it takes the directory's lock, which a
running server holds), not through an RPC: a damaged memory is an operator's matter, so no
tenant-facing call can throw away part of a memory, and it works when the server cannot start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memagent.cli.serve import DEFAULT_DATA_DIR


def register(subparsers) -> None:
    p = subparsers.add_parser("repair", help="salvage a damaged memory (server stopped)", description=__doc__)
    p.add_argument("memory", help="the memory id")
    p.add_argument("--tenant", default="default", help="the tenant the memory belongs to")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the server's data directory")
    p.add_argument("--dry-run", action="store_true", help="report what would be kept; change nothing")
    p.add_argument("--model", help="the memory's model, if its log (or its header) is lost and no snapshot names it")
    p.add_argument("--seed", type=int, default=0, help="the memory's seed, with --model (the server's default: 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from memagent.store import CorruptState, check_name
    from memagent.store.data_dir_lock import DataDirBusy, DataDirLock
    from memagent.store.repair import repair_memory
    from memagent.store.write_ahead_log import LogHeader

    folder = args.data_dir / check_name("tenant", args.tenant) / check_name("memory id", args.memory)
    if not folder.is_dir():
        print(f"memagent repair: no memory at {folder}", file=sys.stderr)
        return 1
    fallback = None
    if args.model:
        import memagent

        engine = memagent.load(args.model)
        fallback = LogHeader.new(seed=args.seed, fingerprint=engine.fingerprint(), model=engine.name)
    try:
        with DataDirLock(args.data_dir):
            result = repair_memory(folder, fallback=fallback, dry_run=args.dry_run)
    except (DataDirBusy, CorruptState) as err:
        print(f"memagent repair: {err}", file=sys.stderr)
        return 1
    print("\n".join(result.lines()))
    if args.dry_run:
        print("dry run: nothing was changed")
    return 0
