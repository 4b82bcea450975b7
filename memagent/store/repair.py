"""Repairing a damaged memory on disk, offline: its log is rewritten from every intact record.

The damaged log is kept beside the new one (`log.wal.damaged-<ms>`), the snapshots are removed
(the new log has a new id; the pool is replayed from the log on first use), and the report says
exactly which entries were kept and what was lost. A lost log header is rebuilt from the seed and
model kept in a snapshot's check file, or from what the operator passes.

A log that is missing or cannot be read at all holds nothing to salvage: the memory is started
again empty, with the seed and model found the same way and entry ids past the snapshot's (an
unreadable file is kept aside as it is).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from memagent.store.errors import CorruptState
from memagent.store.snapshots import Snapshots, header_hint
from memagent.store.write_ahead_log import LOG_FILE, LogHeader, Salvage, Unreadable, WriteAheadLog, decode, salvage


@dataclass(frozen=True)
class Repair:
    salvage: Salvage | None  # None: the log was sound, nothing was changed
    kept_aside: Path | None  # the damaged log, as it was
    lost_log: str = ""  # why the whole log could not be read, and where its new header came from

    def lines(self) -> list[str]:
        if self.salvage is None:
            return ["the log is sound; nothing to repair"]
        s = self.salvage
        if self.lost_log:
            lines = [self.lost_log, "nothing could be salvaged: the memory starts again empty"]
            lines.append(f"next entry id: {s.next_entry_id}")
            if self.kept_aside:
                lines.append(f"the unreadable log is kept as {self.kept_aside}")
            return lines
        ids = [e.entry_id for e in s.kept]
        lines = [f"kept {len(ids)} entries" + (f" (ids {ids[0]}..{ids[-1]}: {_ranges(ids)})" if ids else "")]
        lines.append(f"lost {sum(end - start for start, end in s.lost_ranges)} unreadable bytes at {s.lost_ranges}")
        lines.append(f"entry ids legible in the lost bytes: {s.lost_entry_ids or 'none'}")
        if s.out_of_order:
            lines.append(f"dropped intact records whose ids went backwards: {s.out_of_order}")
        if s.header_rebuilt:
            lines.append("the log header was unreadable and was rebuilt")
        lines.append(f"next entry id: {s.next_entry_id}")
        if self.kept_aside:
            lines.append(f"the damaged log is kept as {self.kept_aside}")
        return lines


def repair_memory(folder: Path, *, fallback: LogHeader | None = None, dry_run: bool = False) -> Repair:
    """Salvage the log in `folder`. `fallback` stands in for a lost header when no snapshot check
    file says which seed and model the memory had."""
    path = Path(folder) / LOG_FILE
    try:
        data = path.read_bytes()
    except OSError as err:
        return _start_again(path, Unreadable.of(err), fallback, dry_run)
    decoded = decode(data)
    if decoded.header is not None and not decoded.damaged and decoded.tail == len(data):
        return Repair(None, None)
    if decoded.header is None:
        hint = header_hint(folder)
        if hint is not None:
            fallback = LogHeader.new(seed=hint.seed, fingerprint=hint.fingerprint, model=hint.model)
        elif fallback is None:
            raise CorruptState("the log header is lost and no snapshot says which model wrote it: name the model")
    header, report = salvage(data, fallback or decoded.header)
    if dry_run:
        return Repair(report, None)
    kept_aside = path.with_name(f"{LOG_FILE}.damaged-{int(time.time() * 1000)}")
    kept_aside.write_bytes(data)
    WriteAheadLog.create(path, header, report.kept)
    Snapshots(folder, header.fingerprint).remove_stale(header.log_id)
    return Repair(report, kept_aside)


def _start_again(path: Path, unreadable: Unreadable, fallback: LogHeader | None, dry_run: bool) -> Repair:
    """An empty log in place of one that cannot be read, its header from a snapshot's check file
    (whose entry id is the last one known to have been given) or else from `fallback`."""
    hint = header_hint(path.parent)
    if hint is not None:
        header = LogHeader.new(seed=hint.seed, fingerprint=hint.fingerprint, model=hint.model)
        header = replace(header, next_entry_id=hint.entry_id + 1)
        source = f"its seed and model were taken from a snapshot's check file (taken at entry {hint.entry_id})"
    elif fallback is not None:
        header, source = fallback, "its seed and model are the ones named"
    else:
        raise CorruptState(
            f"its log {unreadable.problem} and no snapshot says which model wrote it: nothing can be "
            "salvaged and nothing was changed; name the model to start the memory again empty, or delete it"
        )
    report = Salvage(True, [], [], [], [], header.next_entry_id)
    lost = f"the log {unreadable.problem}; {source}"
    if dry_run:
        return Repair(report, None, lost)
    kept_aside = path.with_name(f"{LOG_FILE}.damaged-{int(time.time() * 1000)}")
    try:
        os.replace(path, kept_aside)  # a rename needs no read: the bytes stay for whoever can get them back
    except FileNotFoundError:
        kept_aside = None
    WriteAheadLog.create(path, header, [])
    Snapshots(path.parent, header.fingerprint).remove_stale(header.log_id)
    return Repair(report, kept_aside, lost)


def _ranges(ids: list[int]) -> str:
    """1,2,3,5,6 -> '1-3, 5-6'."""
    runs, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}-{a}" if a != start else f"{a}")
            start = b
    return ", ".join(runs)
