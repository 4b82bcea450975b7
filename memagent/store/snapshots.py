"""Snapshots of a memory's pool, so that opening it replays only the log's tail.

A snapshot is two files: the pool (`pool-<log_id>.safetensors`) and its check file
(`pool-<log_id>.json`: the pool file's SHA-256 and the exact log position it was taken at: log
id, step and last entry id). A snapshot is used only if its bytes match the checksum and its
position is one the log holds; otherwise the store replays the log and says so in its log.
Rewriting a log (reset, forget, import) gives it a new id, so a snapshot of an older log never
counts for the current one, whatever order a crash left the files in. The check file also keeps
the log header's seed and model, so a memory whose log header is lost can be repaired.

A long-term memory of whole writes grows by K tokens per layer a write (4.4 MB on the default)
and a written block never changes, so its tokens are not rewritten by every snapshot: they go
to segment files (`writes-<log_id>-<first>-<end>.safetensors`: writes first to end, numbered
from the log's start), each written once, which the check file lists with their checksums. A
snapshot writes one segment: the writes since the last snapshot, merged with the newest
segments while the older holds no more writes than the newer (as a binary counter carries), up
to SEGMENT_WRITES: each write's tokens are written about log2(SEGMENT_WRITES / writes per
snapshot) times in all, and a store of n writes has about n / SEGMENT_WRITES segments.
Segments of evicted writes are deleted. The pool file keeps the pool, every write's key and
the tokens of the writes after the last segment.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save

from memagent.model.memory_pool import MemoryPool
from memagent.model.pool_file import PoolFileError, load_pool, long_term_size, pool_to_bytes, write_atomically
from memagent.model.write_memory import WriteMemory
from memagent.store.write_ahead_log import LogEntry, LogHeader

log = logging.getLogger(__name__)

# Segments merge up to this many writes (282 MB on the default in float32), so that no snapshot
# rewrites more than that; past it a store adds a segment per SEGMENT_WRITES writes.
SEGMENT_WRITES = 64


@dataclass(frozen=True)
class Segment:
    """The long-term tokens of writes `first` to `end` (numbered from the log's start), in a file."""

    first: int
    end: int
    sha256: str


@dataclass(frozen=True)
class SnapshotCheck:
    log_id: str
    step: int
    entry_id: int  # the last entry in the pool (0: none)
    sha256: str
    seed: int
    fingerprint: str
    model: str
    segments: tuple[Segment, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "segments", tuple(Segment(**s) if isinstance(s, dict) else s for s in self.segments))


class Snapshots:
    def __init__(self, folder: Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def path(self, log_id: str) -> Path:
        return self.folder / f"pool-{log_id}.safetensors"

    def check_path(self, log_id: str) -> Path:
        return self.folder / f"pool-{log_id}.json"

    def segment_path(self, log_id: str, segment: Segment) -> Path:
        return self.folder / f"writes-{log_id}-{segment.first}-{segment.end}.safetensors"

    def save(self, pool: MemoryPool, header: LogHeader, entry_id: int) -> None:
        """Snapshot `pool`, which holds the log up to entry `entry_id`; the check file goes last,
        so a crash before it leaves a snapshot that is not used, never a wrong one."""
        segments, sealed_to = (), None
        if isinstance(pool.long_term, WriteMemory):
            segments = self._seal(pool.long_term, header.log_id)
            sealed_to = segments[-1].end if segments else pool.long_term.first
        data = pool_to_bytes(pool, self.fingerprint, sealed_to=sealed_to)
        digest = hashlib.sha256(data).hexdigest()
        check = SnapshotCheck(
            header.log_id, pool.step, entry_id, digest, header.seed, header.fingerprint, header.model, segments
        )
        write_atomically(self.path(header.log_id), data)
        write_atomically(self.check_path(header.log_id), json.dumps(asdict(check)).encode())
        self.remove_stale(header.log_id)

    def _seal(self, store: WriteMemory, log_id: str) -> tuple[Segment, ...]:
        """The segments that hold every write `store` holds: those of the last snapshot still
        needed, a new one of the writes since, and merges of the newest (see the module)."""
        check = read_check(self.check_path(log_id))
        kept = [s for s in (check.segments if check and check.log_id == log_id else ()) if s.end > store.first]
        if kept and (kept[-1].end > store.end or not all(self.segment_path(log_id, s).exists() for s in kept)):
            kept = []  # not this pool's history (a rebuilt pool): start again
        start = kept[-1].end if kept else store.first
        if start < store.end:
            last, first, end = None, start, store.end  # the writes since: a segment to write
        elif kept:
            last = kept.pop()
            first, end = last.first, last.end
        else:
            return ()
        # The carries are found first, so a snapshot writes one segment, not each merge on the way.
        while kept and _held(kept[-1], store) <= end - max(first, store.first) <= SEGMENT_WRITES // 2:
            first, last = kept.pop().first, None
        kept.append(last or self._write_segment(store, log_id, max(first, store.first), end))
        return tuple(kept)

    def _write_segment(self, store: WriteMemory, log_id: str, first: int, end: int) -> Segment:
        data = save({f"ltm.{layer}": rows.contiguous() for layer, rows in enumerate(store.rows(first, end))})
        segment = Segment(first, end, hashlib.sha256(data).hexdigest())
        write_atomically(self.segment_path(log_id, segment), data)
        return segment

    def load(
        self, log_id: str, entries: Sequence[LogEntry], *, device: torch.device, dtype: torch.dtype
    ) -> MemoryPool | None:
        """The snapshot of log `log_id` if it is intact and at a position the log holds, else None
        (none yet, or not to be trusted: replay the log)."""
        path = self.path(log_id)
        if not path.exists():
            return None
        check = read_check(self.check_path(log_id))
        problem = self._problem(check, log_id, entries)
        if problem is None:
            try:
                sealed = self._sealed(check)
                return load_pool(path, self.fingerprint, device=device, dtype=dtype, sealed=sealed)
            except PoolFileError as err:
                problem = str(err)
        log.warning(
            "snapshot not used; replaying the whole log", extra={"path": str(path), "problem": problem}
        )
        self.check_path(log_id).unlink(missing_ok=True)  # so that the next snapshot reuses none of it
        return None

    def _problem(self, check: SnapshotCheck | None, log_id: str, entries: Sequence[LogEntry]) -> str | None:
        if check is None:
            return "its check file is missing or unreadable"
        if check.log_id != log_id:
            return f"its check file names log {check.log_id}"
        if hashlib.sha256(self.path(log_id).read_bytes()).hexdigest() != check.sha256:
            return "its bytes do not match their checksum"
        if any(a.end != b.first for a, b in zip(check.segments, check.segments[1:])):
            return "its segments of long-term writes are not consecutive"
        if (check.entry_id, check.step) != (0, 0) and (check.entry_id, check.step) not in {
            (e.entry_id, e.step) for e in entries
        }:
            return f"it was taken at entry {check.entry_id}, step {check.step}, which this log does not hold"
        return None

    def _sealed(self, check: SnapshotCheck) -> dict[str, torch.Tensor] | None:
        """The long-term tokens the snapshot's segments hold, as `load_pool` takes them; raises
        PoolFileError for a segment missing, unreadable or not matching its checksum."""
        log_id, segments = check.log_id, check.segments
        if not segments:
            return None
        parts = []
        for segment in segments:
            path = self.segment_path(log_id, segment)
            try:
                data = path.read_bytes()
            except OSError as err:
                raise PoolFileError(f"{path}: segment unreadable ({err})") from err
            if hashlib.sha256(data).hexdigest() != segment.sha256:
                raise PoolFileError(f"{path}: segment bytes do not match their checksum")
            try:  # from the bytes already read for the checksum
                parts.append(tensors_from_bytes(data))
            except Exception as err:
                raise PoolFileError(f"{path}: not a readable segment ({err})") from err
        try:  # layer by layer, letting each segment's piece go once joined
            sealed = {name: torch.cat([part.pop(name) for part in parts]) for name in list(parts[0])}
        except (KeyError, RuntimeError) as err:
            raise PoolFileError(f"segments of log {log_id} do not fit together ({err})") from err
        return {f"ltm_sealed.{name.removeprefix('ltm.')}": rows for name, rows in sealed.items()} | {
            "ltm_sealed_from": torch.tensor([segments[0].first])
        }

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

    def files(self, log_id: str) -> list[Path]:
        """The snapshot of log `log_id`'s files: pool, check and the segments it lists."""
        check = read_check(self.check_path(log_id))
        segments = check.segments if check is not None and check.log_id == log_id else ()
        return [self.path(log_id), self.check_path(log_id), *(self.segment_path(log_id, s) for s in segments)]

    def remove_stale(self, log_id: str) -> None:
        keep = set(self.files(log_id))
        for pattern in ("pool-*.safetensors", "pool-*.json", "writes-*.safetensors", ".writes-*.tmp"):
            for path in self.folder.glob(pattern):
                if path not in keep:
                    path.unlink(missing_ok=True)

    def nbytes(self, log_id: str) -> int:
        return sum(p.stat().st_size for p in self.files(log_id) if p.exists())


def _held(segment: Segment, store: WriteMemory) -> int:
    """How many of `segment`'s writes `store` still holds."""
    return segment.end - max(segment.first, store.first)


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
