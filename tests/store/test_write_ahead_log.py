"""The write-ahead log keeps every intact entry, whatever a crash or a bad disk did to it, and
never gives an entry id twice."""

from __future__ import annotations

import pytest

from memagent.store import CorruptState, LogEntry
from memagent.store.write_ahead_log import (
    FRAME,
    LogHeader,
    WriteAheadLog,
    decode_complete,
    entry_from_payload,
    salvage,
)

PLACEHOLDER = LogHeader("", 0, "", "unknown", 0.0, 0.0)


def _entry(i: int) -> LogEntry:
    return LogEntry(i, f"text {i}", "src", [[i, i + 1]], 2, i, 1000.0 + i, {"k": str(i)})


def _record_starts(path) -> list[int]:
    data, at, starts = path.read_bytes(), 0, []
    while at < len(data):
        starts.append(at)
        at += FRAME.size + FRAME.unpack_from(data, at)[0]
    return starts  # [header, entry 1, entry 2, ...]


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "log.wal"
    wal = WriteAheadLog.create(path, LogHeader.new(seed=3, fingerprint="f", model="m"))
    for i in range(1, 6):
        wal.append([_entry(i)])
    return path


def test_round_trip(log_path):
    wal = WriteAheadLog.open(log_path, PLACEHOLDER)
    assert wal.entries == [_entry(i) for i in range(1, 6)] and wal.damage is None
    assert (wal.header.seed, wal.step, wal.next_entry_id) == (3, 5, 6)


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_torn_tail_is_cut_kept_aside_and_its_id_never_reused(log_path, cut):
    size = log_path.stat().st_size
    with open(log_path, "r+b") as f:
        f.truncate(size - cut)
    wal = WriteAheadLog.open(log_path, PLACEHOLDER)
    assert wal.entries == [_entry(i) for i in range(1, 5)] and wal.damage is None
    assert len(list(log_path.parent.glob("log.wal.corrupt-*"))) == 1
    assert wal.next_entry_id == 6  # entry 5 may have been acknowledged
    assert WriteAheadLog.open(log_path, PLACEHOLDER).next_entry_id == 6  # and that is on disk
    wal.append([_entry(6)])
    assert WriteAheadLog.open(log_path, PLACEHOLDER).entries == [*(_entry(i) for i in range(1, 5)), _entry(6)]


def test_a_damaged_last_record_is_a_torn_tail(log_path):
    _flip(log_path, log_path.stat().st_size - 3)
    wal = WriteAheadLog.open(log_path, PLACEHOLDER)
    assert wal.entries == [_entry(i) for i in range(1, 5)] and wal.damage is None and wal.next_entry_id == 6


@pytest.mark.parametrize("where", ["payload", "length", "crc"])
def test_damage_before_intact_records_keeps_them_all_and_marks_the_log(log_path, where):
    before = log_path.read_bytes()
    start = _record_starts(log_path)[2]  # entry 2 of 5
    _flip(log_path, {"payload": start + FRAME.size + 20, "length": start + 1, "crc": start + 5}[where])
    damaged = log_path.read_bytes()
    wal = WriteAheadLog.open(log_path, PLACEHOLDER)
    assert [e.entry_id for e in wal.entries] == [1, 3, 4, 5]
    assert wal.damage is not None and "4 intact entries" in str(wal.damage)
    assert wal.next_entry_id == 6
    assert log_path.read_bytes() == damaged != before  # left for repair, never cut


def test_a_damaged_header_keeps_the_entries(log_path):
    _flip(log_path, 12)
    wal = WriteAheadLog.open(log_path, PLACEHOLDER)
    assert [e.entry_id for e in wal.entries] == [1, 2, 3, 4, 5]
    assert wal.damage.header_lost and wal.header is PLACEHOLDER


def test_garbage_appended_is_cut(log_path):
    with open(log_path, "ab") as f:
        f.write(b"\x00\x01garbage")
    assert len(WriteAheadLog.open(log_path, PLACEHOLDER).entries) == 5


def test_salvage_keeps_every_intact_entry_counts_steps_again_and_reserves_lost_ids(log_path):
    _flip(log_path, _record_starts(log_path)[2] + FRAME.size + 30)  # inside entry 2's payload
    header, report = salvage(log_path.read_bytes(), PLACEHOLDER)
    assert [(e.entry_id, e.step) for e in report.kept] == [(1, 1), (3, 2), (4, 3), (5, 4)]
    assert report.lost_entry_ids == [2] and not report.header_rebuilt
    assert header.next_entry_id == report.next_entry_id == 6 and header.seed == 3


def test_salvage_of_a_lost_header_uses_the_fallback(log_path):
    _flip(log_path, 12)
    header, report = salvage(log_path.read_bytes(), LogHeader.new(seed=9, fingerprint="g", model="n"))
    assert report.header_rebuilt and header.seed == 9 and len(report.kept) == 5


def test_failed_append_takes_back_its_bytes(log_path, monkeypatch):
    wal = WriteAheadLog.open(log_path, PLACEHOLDER)
    size = log_path.stat().st_size

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("memagent.store.write_ahead_log.os.fsync", broken_fsync)
    with pytest.raises(OSError):
        wal.append([_entry(6), _entry(7)])
    monkeypatch.undo()
    assert log_path.stat().st_size == size and len(wal.entries) == 5 and wal.damage is None


@pytest.mark.parametrize(
    "change",
    [
        {"entry_id": -1},
        {"entry_id": 0},
        {"text": 5},
        {"source": None},
        {"metadata": {"k": 1}},
        {"chunks": [[1, -2]]},
        {"chunks": [[]]},
        {"chunks": "12"},
        {"tokens": True},
        {"unknown": 1},
    ],
)
def test_entries_from_outside_are_checked_field_by_field(change):
    payload = {**_entry(1).__dict__, **change}
    with pytest.raises(CorruptState):
        entry_from_payload(payload)


def test_an_imported_log_must_be_whole(log_path):
    assert len(decode_complete(log_path.read_bytes())[1]) == 5
    with pytest.raises(CorruptState, match="cut short"):
        decode_complete(log_path.read_bytes()[:-2])
