"""The write-ahead log keeps every intact entry, whatever a crash or bad disk did to its tail."""

from __future__ import annotations

import pytest

from memagent.store import CorruptState, LogEntry
from memagent.store.write_ahead_log import LogHeader, WriteAheadLog


def _entry(i: int) -> LogEntry:
    return LogEntry(i, f"text {i}", "src", [[i, i + 1]], 2, i, 1000.0 + i, {"k": str(i)})


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "log.wal"
    wal = WriteAheadLog.create(path, LogHeader.new(seed=3, fingerprint="f", model="m"))
    for i in range(1, 6):
        wal.append(_entry(i))
    return path


def test_round_trip(log_path):
    wal = WriteAheadLog.open(log_path)
    assert wal.entries == [_entry(i) for i in range(1, 6)]
    assert (wal.header.seed, wal.step, wal.next_entry_id) == (3, 5, 6)


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_torn_tail_is_cut_and_kept_aside(log_path, cut):
    size = log_path.stat().st_size
    with open(log_path, "r+b") as f:
        f.truncate(size - cut)
    wal = WriteAheadLog.open(log_path)
    assert wal.entries == [_entry(i) for i in range(1, 5)]
    assert len(list(log_path.parent.glob("log.wal.corrupt-*"))) == 1
    wal.append(_entry(5))  # appends after the cut are readable
    assert WriteAheadLog.open(log_path).entries == [_entry(i) for i in range(1, 6)]


def test_corrupt_record_ends_the_log_there(log_path):
    data = bytearray(log_path.read_bytes())
    data[-3] ^= 0xFF  # inside the last record's payload: its CRC no longer matches
    log_path.write_bytes(bytes(data))
    assert WriteAheadLog.open(log_path).entries == [_entry(i) for i in range(1, 5)]


def test_garbage_appended_is_cut(log_path):
    with open(log_path, "ab") as f:
        f.write(b"\x00\x01garbage")
    assert len(WriteAheadLog.open(log_path).entries) == 5


def test_unreadable_header_is_an_error(tmp_path):
    path = tmp_path / "log.wal"
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(CorruptState, match="no readable header"):
        WriteAheadLog.open(path)


def test_failed_append_takes_back_its_bytes(log_path, monkeypatch):
    wal = WriteAheadLog.open(log_path)
    size = log_path.stat().st_size

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("memagent.store.write_ahead_log.os.fsync", broken_fsync)
    with pytest.raises(OSError):
        wal.append(_entry(6))
    monkeypatch.undo()
    assert log_path.stat().st_size == size and len(wal.entries) == 5
