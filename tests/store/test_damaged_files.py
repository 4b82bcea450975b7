"""Damaged files never silently lose or change what was acknowledged: a damaged log keeps every
intact entry and makes its memory refuse calls (others keep serving) until it is repaired (a lost
or unreadable log too: repair starts it again empty); a snapshot is used only when its checksum
and log position check out; bad imports create nothing."""

from __future__ import annotations

import errno
import json
import logging
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors

from memagent.store import CorruptState, MemoryStore, NewText
from memagent.store.errors import MemoryDamaged, RequestIdReused
from memagent.store.repair import repair_memory
from memagent.store.write_ahead_log import FRAME, LOG_FILE, LogHeader, encode

TEXTS = [f"Note {i}: the code for locker {i} is {1000 + 7 * i}." for i in range(1, 9)]


def _pool(store: MemoryStore, memory: str) -> torch.Tensor:
    return load_tensors(store.export("t", memory).pool)["memory"]


def _store(engine, path, memory="m", texts=TEXTS, **options) -> MemoryStore:
    store = MemoryStore(engine, path, **options)
    store.create("t", memory)
    store.inject("t", memory, [NewText(t) for t in texts])
    return store


def _record_start(log_path, index: int) -> int:
    """Byte offset of record `index` (0: the header, i: entry i)."""
    data, at = log_path.read_bytes(), 0
    for _ in range(index):
        at += FRAME.size + FRAME.unpack_from(data, at)[0]
    return at


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_flipped_bit_mid_log_keeps_all_later_entries_and_refuses_until_repaired(tiny_engine, tmp_path):
    store = _store(tiny_engine, tmp_path)
    _store(tiny_engine, tmp_path, "other", TEXTS[:2])
    log_path = tmp_path / "t" / "m" / LOG_FILE
    _flip(log_path, _record_start(log_path, 3) + FRAME.size + 40)  # inside entry 3 of 8

    reopened = MemoryStore(tiny_engine, tmp_path)
    info = reopened.get("t", "m")
    assert "damaged" not in info.damage and "7 intact entries" in info.damage and info.entries == 7
    for call in (
        lambda: reopened.inject("t", "m", [NewText("a new fact")]),
        lambda: reopened.entries("t", "m"),
        lambda: list(reopened.generate("t", "m", "Hello")),
        lambda: reopened.export("t", "m"),
        lambda: reopened.reset("t", "m"),
    ):
        with pytest.raises(MemoryDamaged, match="memagent repair m"):
            call()
    assert [m.memory_id for m in reopened.list("t")] == ["m", "other"]
    assert reopened.inject("t", "other", [NewText("Other memories keep serving.")])[0].entry_id == 3

    result = repair_memory(tmp_path / "t" / "m")
    assert [e.entry_id for e in result.salvage.kept] == [1, 2, 4, 5, 6, 7, 8]
    assert result.salvage.lost_entry_ids == [3] and result.kept_aside.exists()
    assert "ids 1..8: 1-2, 4-8" in "\n".join(result.lines())
    repaired = MemoryStore(tiny_engine, tmp_path)
    assert repaired.get("t", "m").damage == ""
    assert [e.text for e in repaired.entries("t", "m")] == [t for i, t in enumerate(TEXTS, 1) if i != 3]
    assert repaired.inject("t", "m", [NewText("After the repair.")])[0].entry_id == 9  # never 3, never 8
    expected = _store(tiny_engine, tmp_path / "reference", "m", [t for i, t in enumerate(TEXTS, 1) if i != 3])
    expected.inject("t", "m", [NewText("After the repair.")])
    assert torch.equal(_pool(repaired, "m"), _pool(expected, "m"))


def test_a_damaged_log_header_keeps_the_memory_listed_and_repair_rebuilds_it(tiny_engine, tmp_path):
    store = _store(tiny_engine, tmp_path, snapshot_every=2)
    expected = _pool(store, "m")
    _flip(tmp_path / "t" / "m" / LOG_FILE, 20)
    reopened = MemoryStore(tiny_engine, tmp_path)
    assert "header is unreadable" in reopened.get("t", "m").damage
    with pytest.raises(MemoryDamaged):
        reopened.inject("t", "m", [NewText("x y z")])
    result = repair_memory(tmp_path / "t" / "m")  # the snapshot's check file names seed and model
    assert result.salvage.header_rebuilt and len(result.salvage.kept) == len(TEXTS)
    assert torch.equal(_pool(MemoryStore(tiny_engine, tmp_path), "m"), expected)


def test_repair_of_a_lost_header_without_snapshots_needs_the_model(tiny_engine, tmp_path):
    _store(tiny_engine, tmp_path, snapshot_every=100)
    _flip(tmp_path / "t" / "m" / LOG_FILE, 20)
    with pytest.raises(CorruptState, match="name the model"):
        repair_memory(tmp_path / "t" / "m")
    fallback = LogHeader.new(seed=0, fingerprint=tiny_engine.fingerprint(), model=tiny_engine.name)
    assert len(repair_memory(tmp_path / "t" / "m", fallback=fallback).salvage.kept) == len(TEXTS)


@pytest.mark.parametrize("loss", ["missing", "I/O error"])
def test_a_lost_or_unreadable_log_is_shown_damaged_and_repair_starts_the_memory_again(
    tiny_engine, tmp_path, monkeypatch, loss
):
    _store(tiny_engine, tmp_path, snapshot_every=2)  # a snapshot at entry 8 keeps the seed and model
    _store(tiny_engine, tmp_path, "other", TEXTS[:2])
    log_path = tmp_path / "t" / "m" / LOG_FILE
    if loss == "missing":
        log_path.unlink()
    else:
        read_bytes = Path.read_bytes

        def failing_disk(path: Path) -> bytes:
            if path == log_path:
                raise OSError(errno.EIO, "Input/output error")
            return read_bytes(path)

        monkeypatch.setattr(Path, "read_bytes", failing_disk)

    reopened = MemoryStore(tiny_engine, tmp_path)
    assert [m.memory_id for m in reopened.list("t")] == ["m", "other"]
    problem = "is missing" if loss == "missing" else "cannot be read (Input/output error)"
    assert f"its log {problem}; no entries could be read" in reopened.get("t", "m").damage
    for call in (lambda: reopened.inject("t", "m", [NewText("x y z")]), lambda: reopened.entries("t", "m")):
        with pytest.raises(MemoryDamaged, match="memagent repair m --tenant t"):
            call()
    assert reopened.inject("t", "other", [NewText("Other memories keep serving.")])[0].entry_id == 3

    result = repair_memory(tmp_path / "t" / "m")
    assert result.salvage.kept == [] and result.salvage.next_entry_id == 9
    assert (result.kept_aside is None) == (loss == "missing")
    report = "\n".join(result.lines())
    assert f"the log {problem}" in report and "nothing could be salvaged" in report and "entry 8" in report
    monkeypatch.undo()
    repaired = MemoryStore(tiny_engine, tmp_path)
    assert repaired.get("t", "m").damage == "" and repaired.entries("t", "m") == []
    assert repaired.inject("t", "m", [NewText("Starting again.")])[0].entry_id == 9  # no id given twice
    expected = _store(tiny_engine, tmp_path / "reference", "m", ["Starting again."])
    assert torch.equal(_pool(repaired, "m"), _pool(expected, "m"))  # the memory's own seed


def test_repair_of_a_missing_log_without_snapshots_changes_nothing_unless_the_model_is_named(tiny_engine, tmp_path):
    _store(tiny_engine, tmp_path, snapshot_every=100)
    (tmp_path / "t" / "m" / LOG_FILE).unlink()
    with pytest.raises(CorruptState, match="nothing can be salvaged and nothing was changed"):
        repair_memory(tmp_path / "t" / "m")
    assert not (tmp_path / "t" / "m" / LOG_FILE).exists()
    fallback = LogHeader.new(seed=0, fingerprint=tiny_engine.fingerprint(), model=tiny_engine.name)
    assert repair_memory(tmp_path / "t" / "m", fallback=fallback).salvage.next_entry_id == 1
    assert MemoryStore(tiny_engine, tmp_path).get("t", "m").damage == ""


def test_a_sound_log_is_left_alone(tiny_engine, tmp_path):
    _store(tiny_engine, tmp_path, texts=TEXTS[:2])
    before = (tmp_path / "t" / "m" / LOG_FILE).read_bytes()
    assert repair_memory(tmp_path / "t" / "m").salvage is None
    assert (tmp_path / "t" / "m" / LOG_FILE).read_bytes() == before


@pytest.mark.parametrize("damage", ["tensor bytes", "check file", "check file missing", "position"])
def test_a_snapshot_that_does_not_check_out_is_replaced_by_a_replay_and_said(tiny_engine, tmp_path, caplog, damage):
    store = _store(tiny_engine, tmp_path, snapshot_every=1)
    expected = _pool(store, "m")
    folder = tmp_path / "t" / "m"
    (snapshot,) = folder.glob("pool-*.safetensors")
    (check,) = folder.glob("pool-*.json")
    if damage == "tensor bytes":
        _flip(snapshot, snapshot.stat().st_size - 100)
    elif damage == "check file":
        check.write_text("{not json")
    elif damage == "check file missing":
        check.unlink()
    else:  # taken at a log position this log does not hold (a stale snapshot after lost entries)
        check.write_text(json.dumps({**json.loads(check.read_text()), "entry_id": 99}))
    with caplog.at_level(logging.WARNING):
        assert torch.equal(_pool(MemoryStore(tiny_engine, tmp_path), "m"), expected)
    assert "snapshot not used; replaying the whole log" in caplog.messages


def test_a_snapshot_newer_than_its_torn_log_is_not_served(tiny_engine, tmp_path):
    store = _store(tiny_engine, tmp_path, snapshot_every=1)
    log_path = tmp_path / "t" / "m" / LOG_FILE
    with open(log_path, "r+b") as f:  # the last entry's record torn away (never acknowledged, say)
        f.truncate(_record_start(log_path, len(TEXTS)) + 10)
    expected = _store(tiny_engine, tmp_path / "reference", texts=TEXTS[:-1])
    reopened = MemoryStore(tiny_engine, tmp_path)
    assert torch.equal(_pool(reopened, "m"), _pool(expected, "m"))
    assert reopened.inject("t", "m", [NewText("next")])[0].entry_id == len(TEXTS) + 1
    del store


def test_a_failed_snapshot_after_a_logged_write_still_acknowledges_it(tiny_engine, tmp_path, monkeypatch):
    store = _store(tiny_engine, tmp_path, texts=TEXTS[:1], snapshot_every=1)

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("memagent.store.snapshots.write_atomically", disk_full)
    receipts = store.inject("t", "m", [NewText(TEXTS[1])])
    assert receipts[0].entry_id == 2
    monkeypatch.undo()
    assert [e.text for e in MemoryStore(tiny_engine, tmp_path).entries("t", "m")] == TEXTS[:2]
    assert not list((tmp_path / "t" / "m").glob(".*"))  # no temporary file left behind


def test_a_request_id_makes_a_retry_return_the_first_receipts(tiny_engine, tmp_path):
    store = _store(tiny_engine, tmp_path, texts=TEXTS[:1])
    texts = [NewText(TEXTS[1]), NewText(TEXTS[2], "s", {"k": "v"})]
    first = store.inject("t", "m", texts, request_id="req-1")
    reopened = MemoryStore(tiny_engine, tmp_path)  # remembered in the log, across restarts
    again = reopened.inject("t", "m", texts, request_id="req-1")
    assert [(r.entry_id, r.step) for r in again] == [(r.entry_id, r.step) for r in first] == [(2, 2), (3, 3)]
    assert len(reopened.entries("t", "m")) == 3
    with pytest.raises(RequestIdReused, match="req-1"):
        reopened.inject("t", "m", [NewText("something else")], request_id="req-1")


def _log_with(store: MemoryStore, **change) -> bytes:
    state = store.export("t", "m")
    from memagent.store.write_ahead_log import decode_complete

    header, entries = decode_complete(state.log)
    first = entries[0].__class__(**{**entries[0].__dict__, **change})
    return encode(header, [first, *entries[1:]])


@pytest.mark.parametrize(
    "change, words",
    [
        ({"chunks": [[10**9, 1, 2]]}, "vocabulary"),
        ({"text": 42}, "invalid text"),
        ({"entry_id": -5}, "invalid entry_id"),
        ({"entry_id": 7}, "not increasing"),
        ({"metadata": {"k": ["list"]}}, "invalid metadata"),
        ({"chunks": [list(range(5000))]}, "a write of 5000 tokens"),
    ],
)
def test_import_validates_the_log_before_creating_anything(tiny_engine, tmp_path, change, words):
    store = _store(tiny_engine, tmp_path, texts=TEXTS[:3])
    with pytest.raises(CorruptState, match=words):
        store.import_state("t", "copy", _log_with(store, **change), None)
    assert [m.memory_id for m in store.list("t")] == ["m"]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["m"]


def test_import_refuses_a_pool_of_another_shape_with_a_copied_fingerprint(tiny_engine, tmp_path):
    from memagent.model.memory_pool import MemoryPool
    from memagent.model.pool_file import pool_to_bytes

    store = _store(tiny_engine, tmp_path, texts=TEXTS[:1])
    state = store.export("t", "m")
    real = tiny_engine.model.pool
    L, N, d = real.memory.shape
    wrong = MemoryPool(torch.zeros(L, N // 2, d), True, drop_per_layer=real.drop_per_layer)
    wrong.step = state.step
    with pytest.raises(CorruptState, match="shape"):
        store.import_state("t", "copy", state.log, pool_to_bytes(wrong, tiny_engine.fingerprint()))
    assert [m.memory_id for m in store.list("t")] == ["m"]


def test_data_files_are_owner_only(tiny_engine, tmp_path):
    store = _store(tiny_engine, tmp_path / "data", texts=TEXTS[:2], snapshot_every=1)
    store.close()
    for path in (tmp_path / "data").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
