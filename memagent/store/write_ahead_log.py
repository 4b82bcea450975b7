"""The write-ahead log of one memory: every text it was told, in order, fsynced before a reply.

The file is a sequence of records, each `length (u32 LE) | crc32 (u32 LE) | JSON payload`. The
first record is the header (the seed of the pool's drop randomness, the model, ids); each later
record is one entry: the text, its source label and metadata, the exact token chunks written,
and the pool's step after them. Replaying the chunks on a fresh pool seeded from the header
rebuilds the pool exactly, which is also how forgetting works (replay all but some entries).

A record that is cut short (a crash mid-append) or fails its CRC ends the log: opening the log
keeps every entry before it, moves the bad tail to a `.corrupt-*` file beside the log and
truncates the log there.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from memagent.model.pool_file import write_atomically
from memagent.store.errors import CorruptState

FORMAT = "memagent.wal/1"
FRAME = struct.Struct("<II")  # payload length, crc32 of payload
MAX_RECORD_BYTES = 1 << 30

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogHeader:
    log_id: str  # new for every rewrite; names the snapshots that belong to this log
    seed: int  # seeds the pool's generator (which tokens a write drops)
    fingerprint: str  # the model that wrote the pool
    model: str
    created: float
    rewritten: float
    next_entry_id: int = 1  # entry ids never repeat, even after forgetting the last ones
    format: str = FORMAT

    @classmethod
    def new(cls, *, seed: int, fingerprint: str, model: str) -> LogHeader:
        now = time.time()
        return cls(uuid.uuid4().hex, seed, fingerprint, model, created=now, rewritten=now)

    def rewrite(self, next_entry_id: int) -> LogHeader:
        """The header of a rewritten log (reset, forget, fork, import): a new id, same seed and model."""
        return replace(self, log_id=uuid.uuid4().hex, rewritten=time.time(), next_entry_id=next_entry_id)


@dataclass(frozen=True)
class LogEntry:
    entry_id: int
    text: str
    source: str
    chunks: list[list[int]]  # the token ids of each write, as written
    tokens: int  # tokens of the text as given
    step: int  # the pool's write count after this entry
    time: float
    metadata: dict[str, str] = field(default_factory=dict)


def _record(payload: dict) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return FRAME.pack(len(data), zlib.crc32(data)) + data


def encode(header: LogHeader, entries: list[LogEntry]) -> bytes:
    """A whole log file."""
    return b"".join([_record(asdict(header))] + [_record(asdict(e)) for e in entries])


def decode(data: bytes) -> tuple[LogHeader, list[LogEntry], int]:
    """The header, the intact entries, and the offset where the intact records end."""
    payloads, end = _payloads(data)
    if not payloads:
        raise CorruptState("the log has no readable header record")
    try:
        header = LogHeader(**payloads[0])
    except TypeError as err:
        raise CorruptState(f"the log header is not a memagent log header ({err})") from err
    if header.format != FORMAT:
        raise CorruptState(f"unknown log format {header.format!r} (expected {FORMAT!r})")
    entries = []
    for i, payload in enumerate(payloads[1:], start=1):
        try:
            entries.append(LogEntry(**payload))
        except TypeError as err:
            raise CorruptState(f"log record {i} is not an entry ({err})") from err
    return header, entries, end


def _payloads(data: bytes) -> tuple[list[dict], int]:
    payloads, at = [], 0
    while at + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, at)
        body = data[at + FRAME.size : at + FRAME.size + length]
        if length > MAX_RECORD_BYTES or len(body) < length or zlib.crc32(body) != crc:
            break
        try:
            payloads.append(json.loads(body))
        except ValueError:
            break
        at += FRAME.size + length
    return payloads, at


class WriteAheadLog:
    """One memory's log file, with its header and entries held in memory."""

    def __init__(self, path: Path, header: LogHeader, entries: list[LogEntry]):
        self.path = Path(path)
        self.header = header
        self.entries = entries

    @classmethod
    def create(cls, path: Path, header: LogHeader, entries: list[LogEntry] = ()) -> WriteAheadLog:
        """Write a complete log atomically (a new memory, or a rewrite of an existing one)."""
        entries = list(entries)
        write_atomically(Path(path), encode(header, entries))
        return cls(path, header, entries)

    @classmethod
    def open(cls, path: Path) -> WriteAheadLog:
        """Read a log, cutting off a torn or corrupt tail (kept beside it for inspection)."""
        path = Path(path)
        data = path.read_bytes()
        try:
            header, entries, end = decode(data)
        except CorruptState as err:
            raise CorruptState(f"{path}: {err}") from err
        if end < len(data):
            kept = path.with_name(f"{path.name}.corrupt-{int(time.time() * 1000)}")
            write_atomically(kept, data[end:])
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
            log.warning(
                "log tail cut off",
                extra={
                    "path": str(path),
                    "kept_entries": len(entries),
                    "bad_bytes": len(data) - end,
                    "moved_to": str(kept),
                },
            )
        return cls(path, header, entries)

    def append(self, entry: LogEntry) -> None:
        """Add an entry; on return it is on disk."""
        with open(self.path, "ab") as f:
            end = f.tell()
            try:
                f.write(_record(asdict(entry)))
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                # A half-written record would hide every later one; take it back.
                f.truncate(end)
                raise
        self.entries.append(entry)

    @property
    def next_entry_id(self) -> int:
        last = self.entries[-1].entry_id + 1 if self.entries else 1
        return max(self.header.next_entry_id, last)

    @property
    def step(self) -> int:
        return self.entries[-1].step if self.entries else 0

    def to_bytes(self) -> bytes:
        return encode(self.header, self.entries)
