"""The write-ahead log of one memory: every text it was told, in order, fsynced before a reply.

The file is a sequence of records, each `length (u32 LE) | crc32 (u32 LE) | JSON payload`. The
first record is the header (the seed of the pool's drop randomness, the model, ids); each later
record is one entry: the text, its source label and metadata, the exact token chunks written,
the pool's step after them, and the client's request id if it sent one. Replaying the chunks on
a fresh pool seeded from the header rebuilds the pool exactly, which is also how forgetting
works (replay all but some entries).

Reading never drops an intact record. A bad record (wrong CRC, cut short, not an entry) is
skipped by looking for the next intact one: an entry's payload always starts with
`{"entry_id":`, and a candidate counts only if its length, CRC and fields all check out.
- Bad bytes with no intact record after them are a torn tail (a crash mid-append, or damage
  to the last records): they are moved to a `.corrupt-*` file beside the log and cut off, and
  the ids they may have used are reserved in the header, so no entry id is ever given twice.
- Bad bytes before intact records, or an unreadable header, are damage: the log is left as it
  is and marked damaged (`WriteAheadLog.damage`); the store then refuses the memory until
  `memagent repair` rewrites the log from every intact record (`salvage`).
- A log that is missing, or that the disk will not give back (an I/O error), is damage too
  (`Unreadable`), with no entries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from memagent.model.pool_file import write_atomically
from memagent.store.errors import CorruptState

FORMAT = "memagent.wal/1"
LOG_FILE = "log.wal"  # a memory folder's log
FRAME = struct.Struct("<II")  # payload length, crc32 of payload
MAX_RECORD_BYTES = 1 << 30
ENTRY_START = b'{"entry_id":'  # every entry payload starts so (asdict keeps field order)
ENTRY_ID = re.compile(rb'"entry_id":(\d{1,18})')

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogHeader:
    log_id: str  # new for every rewrite; names the snapshots that belong to this log
    seed: int  # seeds the pool's generator (which tokens a write drops)
    fingerprint: str  # the model that wrote the pool
    model: str
    created: float
    rewritten: float
    next_entry_id: int = 1  # entry ids never repeat, even after forgetting or losing the last ones
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
    request_id: str = ""  # the client's id for the write, so a retry is answered, not applied twice


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def entry_from_payload(payload: object) -> LogEntry:
    """A LogEntry from a decoded record, every field checked (logs may come from anyone: imports)."""
    try:
        entry = LogEntry(**payload)
    except TypeError as err:
        raise CorruptState(f"not a log entry ({err})") from err
    problems = [
        name
        for name, ok in [
            ("entry_id", _is_int(entry.entry_id) and entry.entry_id > 0),
            ("text", isinstance(entry.text, str)),
            ("source", isinstance(entry.source, str)),
            ("request_id", isinstance(entry.request_id, str)),
            ("tokens", _is_int(entry.tokens) and entry.tokens >= 0),
            ("step", _is_int(entry.step) and entry.step >= 0),
            ("time", isinstance(entry.time, (int, float)) and not isinstance(entry.time, bool)),
            (
                "metadata",
                isinstance(entry.metadata, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in entry.metadata.items()),
            ),
            (
                "chunks",
                isinstance(entry.chunks, list)
                and all(isinstance(c, list) and c and all(_is_int(t) and t >= 0 for t in c) for c in entry.chunks),
            ),
        ]
        if not ok
    ]
    if problems:
        raise CorruptState(f"log entry has invalid {', '.join(problems)}")
    return entry


def _header_from_payload(payload: object) -> LogHeader:
    try:
        header = LogHeader(**payload)
    except TypeError as err:
        raise CorruptState(f"the log header is not a memagent log header ({err})") from err
    if header.format != FORMAT:
        raise CorruptState(f"unknown log format {str(header.format)[:40]!r} (expected {FORMAT!r})")
    if not (isinstance(header.log_id, str) and _is_int(header.seed) and _is_int(header.next_entry_id)):
        raise CorruptState("the log header has fields of the wrong type")
    return header


def _record(payload: dict) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return FRAME.pack(len(data), zlib.crc32(data)) + data


def encoded_size(entries: Sequence[LogEntry]) -> int:
    """The bytes `entries` take in a log."""
    return sum(len(_record(asdict(e))) for e in entries)


def encode(header: LogHeader, entries: list[LogEntry]) -> bytes:
    """A whole log file."""
    return b"".join([_record(asdict(header))] + [_record(asdict(e)) for e in entries])


def _payload_at(data: bytes, at: int) -> tuple[object, int] | None:
    """The JSON payload of an intact record at `at` and where the record ends, or None."""
    if at + FRAME.size > len(data):
        return None
    length, crc = FRAME.unpack_from(data, at)
    end = at + FRAME.size + length
    if length > MAX_RECORD_BYTES or end > len(data):
        return None
    body = data[at + FRAME.size : end]
    if zlib.crc32(body) != crc:
        return None
    try:
        return json.loads(body), end
    except ValueError:
        return None


def _entry_at(data: bytes, at: int) -> tuple[LogEntry, int] | None:
    found = _payload_at(data, at)
    if found is None:
        return None
    try:
        return entry_from_payload(found[0]), found[1]
    except CorruptState:
        return None


def _next_entry(data: bytes, after: int) -> int | None:
    """The start of the next intact entry record after byte `after`, or None."""
    at = after + 1
    while (hit := data.find(ENTRY_START, at + FRAME.size)) != -1:
        at = hit - FRAME.size
        if _entry_at(data, at) is not None:
            return at
        at += 1
    return None


@dataclass(frozen=True)
class Decoded:
    header: LogHeader | None  # None: the header record is unreadable
    entries: list[LogEntry]
    damaged: list[tuple[int, int]]  # byte ranges of bad records followed by intact ones
    tail: int  # where a torn tail starts (the file's length if there is none)
    size: int

    @property
    def lost_bytes(self) -> int:
        return sum(end - start for start, end in self.damaged) + self.size - self.tail


def decode(data: bytes) -> Decoded:
    """Every intact record of a log, and where the bad bytes are."""
    header, at = None, 0
    found = _payload_at(data, 0)
    if found is not None:
        try:
            header, at = _header_from_payload(found[0]), found[1]
        except CorruptState:
            pass
    entries, damaged = [], []
    if header is None:
        start = _next_entry(data, -1)
        if start is None:
            return Decoded(None, [], [], 0, len(data))
        if start > 0:
            damaged.append((0, start))
        at = start
    while at < len(data):
        found = _entry_at(data, at)
        if found is not None:
            entries.append(found[0])
            at = found[1]
            continue
        start = _next_entry(data, at)
        if start is None:
            break
        damaged.append((at, start))
        at = start
    return Decoded(header, entries, damaged, at, len(data))


def decode_complete(data: bytes) -> tuple[LogHeader, list[LogEntry]]:
    """A log that must be whole (an import): any bad byte is an error."""
    decoded = decode(data)
    if decoded.header is None:
        raise CorruptState("the log has no readable header record")
    if decoded.damaged or decoded.tail != len(data):
        start = decoded.damaged[0][0] if decoded.damaged else decoded.tail
        if (found := _payload_at(data, start)) is not None:  # intact bytes, but not an entry: say why
            entry_from_payload(found[0])
        raise CorruptState(f"damaged or cut short at byte {start} of {len(data)}")
    ids = [e.entry_id for e in decoded.entries]
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise CorruptState("entry ids are not increasing")
    return decoded.header, decoded.entries


def reserved_after(entries: list[LogEntry], lost: bytes) -> int:
    """The next entry id that cannot have been given to anything in `lost` bytes: one past every
    id still readable there, and one per record that may have been there."""
    last = entries[-1].entry_id if entries else 0
    readable = [int(m) for m in ENTRY_ID.findall(lost)]
    records = max(1, lost.count(b'"entry_id":')) if lost else 0
    return max([last + records + 1] + [i + 1 for i in readable])


@dataclass(frozen=True)
class Damage:
    """Why a log cannot be used as it is; `memagent repair` salvages it."""

    header_lost: bool
    ranges: list[tuple[int, int]]
    intact_entries: int

    def __str__(self) -> str:
        parts = ["its log header is unreadable"] if self.header_lost else []
        if self.ranges:
            lost = sum(end - start for start, end in self.ranges)
            parts.append(f"{lost} bytes of its log are unreadable (first at byte {self.ranges[0][0]})")
        return f"{' and '.join(parts)}; {self.intact_entries} intact entries are kept"


@dataclass(frozen=True)
class Unreadable:
    """Why a log could not be read at all; `memagent repair` rebuilds it empty."""

    problem: str

    @classmethod
    def of(cls, err: OSError) -> Unreadable:
        if isinstance(err, FileNotFoundError):
            return cls("is missing")
        return cls(f"cannot be read ({err.strerror or err})")

    def __str__(self) -> str:
        return f"its log {self.problem}; no entries could be read"


class WriteAheadLog:
    """One memory's log file, with its header and entries held in memory."""

    def __init__(
        self, path: Path, header: LogHeader, entries: list[LogEntry], damage: Damage | Unreadable | None = None
    ):
        self.path = Path(path)
        self.header = header
        self.entries = entries
        self.damage = damage
        self.by_request = {}
        for entry in entries:
            self._index(entry)

    @classmethod
    def create(cls, path: Path, header: LogHeader, entries: list[LogEntry] = ()) -> WriteAheadLog:
        """Write a complete log atomically (a new memory, or a rewrite of an existing one)."""
        entries = list(entries)
        write_atomically(Path(path), encode(header, entries))
        return cls(path, header, entries)

    @classmethod
    def read(cls, path: Path, placeholder: LogHeader) -> WriteAheadLog:
        """A log as it is, changing nothing (another process may be appending): every intact
        entry, and its damage if any (a torn tail is the writer's to cut, not damage)."""
        decoded = decode(Path(path).read_bytes())
        damage = None
        if decoded.header is None or decoded.damaged:
            damage = Damage(decoded.header is None, decoded.damaged, len(decoded.entries))
        return cls(path, decoded.header or placeholder, decoded.entries, damage)

    @classmethod
    def unreadable(cls, path: Path, placeholder: LogHeader, err: OSError) -> WriteAheadLog:
        """A log that could not be read (`err`): no entries, marked damaged."""
        damage = Unreadable.of(err)
        log.error(
            "memory log unreadable; the memory refuses calls until repaired",
            extra={"path": str(path), "damage": str(damage)},
        )
        return cls(path, placeholder, [], damage)

    @classmethod
    def open(cls, path: Path, placeholder: LogHeader) -> WriteAheadLog:
        """Read a log. A torn tail is cut off (kept beside it); other damage leaves the file as it
        is and the log marked damaged, with `placeholder` standing in for an unreadable header."""
        path = Path(path)
        data = path.read_bytes()
        decoded = decode(data)
        if decoded.header is None or decoded.damaged:
            damage = Damage(decoded.header is None, decoded.damaged, len(decoded.entries))
            log.error(
                "memory log damaged; the memory refuses calls until repaired",
                extra={"path": str(path), "damage": str(damage)},
            )
            return cls(path, decoded.header or placeholder, decoded.entries, damage)
        header = decoded.header
        if decoded.tail < len(data):
            tail = data[decoded.tail :]
            kept = path.with_name(f"{path.name}.corrupt-{int(time.time() * 1000)}")
            write_atomically(kept, tail)
            header = replace(header, next_entry_id=max(header.next_entry_id, reserved_after(decoded.entries, tail)))
            write_atomically(path, encode(header, decoded.entries))  # same log id: its snapshots still count
            log.warning(
                "log tail cut off",
                extra={
                    "path": str(path),
                    "kept_entries": len(decoded.entries),
                    "bad_bytes": len(tail),
                    "moved_to": str(kept),
                    "next_entry_id": header.next_entry_id,
                },
            )
        return cls(path, header, decoded.entries)

    def append(self, entries: list[LogEntry]) -> None:
        """Add entries, all or none; on return they are on disk."""
        data = b"".join(_record(asdict(e)) for e in entries)
        with open(self.path, "ab") as f:
            end = f.tell()
            try:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                # A half-written record would read as damage once more records follow; take it back.
                # If even that fails, later records would follow unacknowledged bytes: refuse more.
                try:
                    f.truncate(end)
                except OSError as err:
                    self.damage = Damage(False, [(end, end + len(data))], len(self.entries))
                    log.error(
                        "a failed append could not be taken back", extra={"path": str(self.path), "error": str(err)}
                    )
                raise
        self.entries.extend(entries)
        for entry in entries:
            self._index(entry)

    def _index(self, entry: LogEntry) -> None:
        if entry.request_id:
            self.by_request.setdefault(entry.request_id, []).append(entry)

    @property
    def next_entry_id(self) -> int:
        last = self.entries[-1].entry_id + 1 if self.entries else 1
        return max(self.header.next_entry_id, last)

    @property
    def step(self) -> int:
        return self.entries[-1].step if self.entries else 0

    def to_bytes(self) -> bytes:
        return encode(self.header, self.entries)


@dataclass(frozen=True)
class Salvage:
    """What `salvage` kept and lost."""

    header_rebuilt: bool
    kept: list[LogEntry]
    lost_ranges: list[tuple[int, int]]  # byte ranges of the old file no record could be read from
    lost_entry_ids: list[int]  # ids still legible in the lost bytes
    out_of_order: list[int]  # intact records whose id repeats or goes back: not kept
    next_entry_id: int


def salvage(data: bytes, fallback: LogHeader) -> tuple[LogHeader, Salvage]:
    """A new, whole log from every intact record of a damaged one: the header (or `fallback`),
    the entries in order with their steps counted again (lost entries no longer count), and a
    next entry id past every id the lost bytes may have held."""
    decoded = decode(data)
    lost_ranges = list(decoded.damaged) + ([(decoded.tail, len(data))] if decoded.tail < len(data) else [])
    header = decoded.header or fallback
    kept, out_of_order, step, last = [], [], 0, 0
    for entry in decoded.entries:
        if entry.entry_id <= last:  # ids only grow, so this record is not one of the log's entries
            out_of_order.append(entry.entry_id)
            continue
        step += len(entry.chunks)
        kept.append(replace(entry, step=step))
        last = entry.entry_id
    legible = {int(m) for start, end in lost_ranges for m in ENTRY_ID.findall(data[start:end])}
    lost_ids = sorted(legible - {e.entry_id for e in kept})
    tail = data[decoded.tail :]
    next_id = max([header.next_entry_id, reserved_after(kept, tail), last + 1] + [i + 1 for i in lost_ids])
    salvaged = Salvage(decoded.header is None, kept, lost_ranges, lost_ids, out_of_order, next_id)
    return header.rewrite(next_id), salvaged
