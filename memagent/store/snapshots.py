"""Snapshots of a memory's pool, so that opening it replays only the log's tail.

A snapshot is two files: the pool (`pool-<log_id>.safetensors`) and its check file
(`pool-<log_id>.json`: the pool file's SHA-256 and the exact log position it was taken at: log
id, step and last entry id). A snapshot is used only if its bytes match the checksum and its
position is one the log holds; otherwise the store replays the log and says so in its log.
Rewriting a log (reset, forget, import) gives it a new id, so a snapshot of an older log never
counts for the current one, whatever order a crash left the files in. The check file also keeps
the log header's seed and model, so a memory whose log header is lost can be repaired.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from memagent.model.memory_pool import MemoryPool
from memagent.model.pool_file import PoolFileError, load_pool, long_term_size, pool_to_bytes, write_atomically
from memagent.store.write_ahead_log import LogEntry, LogHeader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotCheck:
    log_id: str
    step: int
    entry_id: int  # the last entry in the pool (0: none)
    sha256: str
    seed: int
    fingerprint: str
    model: str


class Snapshots:
    def __init__(self, folder: Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def path(self, log_id: str) -> Path:
        return self.folder / f"pool-{log_id}.safetensors"

    def check_path(self, log_id: str) -> Path:
        return self.folder / f"pool-{log_id}.json"

    def save(self, pool: MemoryPool, header: LogHeader, entry_id: int) -> None:
        """Snapshot `pool`, which holds the log up to entry `entry_id`; the check file goes last,
        so a crash between the two leaves a snapshot that is not used, never a wrong one."""
        data = pool_to_bytes(pool, self.fingerprint)
        digest = hashlib.sha256(data).hexdigest()
        check = SnapshotCheck(
            header.log_id, pool.step, entry_id, digest, header.seed, header.fingerprint, header.model
        )
        write_atomically(self.path(header.log_id), data)
        write_atomically(self.check_path(header.log_id), json.dumps(asdict(check)).encode())
        self.remove_stale(header.log_id)

    def load(
        self, log_id: str, entries: Sequence[LogEntry], *, device: torch.device, dtype: torch.dtype
    ) -> MemoryPool | None:
        """The snapshot of log `log_id` if it is intact and at a position the log holds, else None
        (none yet, or not to be trusted: replay the log)."""
        path = self.path(log_id)
        if not path.exists():
            return None
        problem = self._problem(log_id, entries)
        if problem is None:
            try:
                return load_pool(path, self.fingerprint, device=device, dtype=dtype)
            except PoolFileError as err:
                problem = str(err)
        log.warning(
            "snapshot not used; replaying the whole log", extra={"path": str(path), "problem": problem}
        )
        return None

    def _problem(self, log_id: str, entries: Sequence[LogEntry]) -> str | None:
        check = read_check(self.check_path(log_id))
        if check is None:
            return "its check file is missing or unreadable"
        if check.log_id != log_id:
            return f"its check file names log {check.log_id}"
        if hashlib.sha256(self.path(log_id).read_bytes()).hexdigest() != check.sha256:
            return "its bytes do not match their checksum"
        if (check.entry_id, check.step) != (0, 0) and (check.entry_id, check.step) not in {
            (e.entry_id, e.step) for e in entries
        }:
            return f"it was taken at entry {check.entry_id}, step {check.step}, which this log does not hold"
        return None

    def long_term_size(self, log_id: str, step: int) -> int | None:
        """The long-term memory size of the snapshot of log `log_id` if it was taken at `step`
        (read from its header), else None."""
        check = read_check(self.check_path(log_id))
        if check is None or (check.log_id, check.step) != (log_id, step):
            return None
        try:
            return long_term_size(self.path(log_id))
        except PoolFileError:
            return None

    def remove_stale(self, log_id: str) -> None:
        keep = {self.path(log_id), self.check_path(log_id)}
        for path in [*self.folder.glob("pool-*.safetensors"), *self.folder.glob("pool-*.json")]:
            if path not in keep:
                path.unlink(missing_ok=True)

    def nbytes(self, log_id: str) -> int:
        return sum(p.stat().st_size for p in (self.path(log_id), self.check_path(log_id)) if p.exists())


def read_check(path: Path) -> SnapshotCheck | None:
    try:
        return SnapshotCheck(**json.loads(path.read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def header_hint(folder: Path) -> SnapshotCheck | None:
    """The seed and model a memory's snapshots were written with (for rebuilding a lost header)."""
    for path in sorted(Path(folder).glob("pool-*.json")):
        if (check := read_check(path)) is not None:
            return check
    return None
