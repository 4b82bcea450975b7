"""Repairing a damaged memory on disk, offline: its log is rewritten from every intact record.

The damaged log is kept beside the new one (`log.wal.damaged-<ms>`), the snapshots are removed
(the new log has a new id; the pool is replayed from the log on first use), and the report says
exactly which entries were kept and what was lost. A lost log header is rebuilt from the seed and
model kept in a snapshot's check file, or from what the operator passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from memagent.store.errors import CorruptState
from memagent.store.snapshots import Snapshots, header_hint
from memagent.store.write_ahead_log import LOG_FILE, LogHeader, Salvage, WriteAheadLog, decode, salvage


@dataclass(frozen=True)
class Repair:
    salvage: Salvage | None  # None: the log was sound, nothing was changed
    kept_aside: Path | None  # the damaged log, as it was

    def lines(self) -> list[str]:
        if self.salvage is None:
            return ["the log is sound; nothing to repair"]
        s = self.salvage
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
    data = path.read_bytes()
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


def _ranges(ids: list[int]) -> str:
    """1,2,3,5,6 -> '1-3, 5-6'."""
    runs, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}-{a}" if a != start else f"{a}")
            start = b
    return ", ".join(runs)
