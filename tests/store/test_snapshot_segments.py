"""Snapshots of a long-term memory of whole writes: its tokens go to segment files written once
and merged as a binary counter carries, so a snapshot writes about what changed since the last,
and a memory reopened from them is the one that was written, bit for bit."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load as load_tensors

import memagent
from memagent.model.pool_file import PoolFileError, load_pool, pool_to_bytes
from memagent.model.recall_keys import LexicalKeys
from memagent.store import MemoryStore, NewText
from memagent.store import snapshots as snapshot_module
from memagent.store.snapshots import read_check

TEXTS = [f"Note {i}: locker {i} holds parcel {i * 7}." for i in range(12)]


@pytest.fixture(scope="module")
def engine() -> memagent.Engine:
    return memagent.load("random:tiny-writes")


@pytest.fixture(scope="module")
def bounded() -> memagent.Engine:
    return memagent.load("random:tiny-writes", max_long_term_tokens=4 * 8)  # 4 writes of K = 8


def pool_tensors(store: MemoryStore, memory: str = "m") -> dict[str, torch.Tensor]:
    return load_tensors(store.export("t", memory).pool)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check(store: MemoryStore, memory: str = "m"):
    folder = store.root / "t" / memory
    (path,) = folder.glob("pool-*.json")
    return read_check(path)


def written(monkeypatch) -> list[tuple[str, int]]:
    """(file name, bytes) of every file the snapshots write from now on."""
    log: list[tuple[str, int]] = []
    real = snapshot_module.write_atomically

    def recording(path, data):
        log.append((path.name, len(data)))
        real(path, data)

    monkeypatch.setattr(snapshot_module, "write_atomically", recording)
    return log


def test_each_snapshot_writes_the_new_writes_and_merges_like_a_binary_counter(engine, tmp_path, monkeypatch):
    store = MemoryStore(engine, tmp_path, snapshot_every=1)
    store.create("t", "m")
    files = written(monkeypatch)
    ranges = []
    for text in TEXTS[:8]:
        files.clear()
        store.inject("t", "m", [NewText(text)])
        ranges.append([(s.first, s.end) for s in check(store).segments])
        segment_files = [name for name, _ in files if name.startswith("writes-")]
        assert segment_files, "each snapshot seals the write it follows"
    assert ranges == [
        [(0, 1)], [(0, 2)], [(0, 2), (2, 3)], [(0, 4)],
        [(0, 4), (4, 5)], [(0, 4), (4, 6)], [(0, 4), (4, 6), (6, 7)], [(0, 8)],
    ]
    on_disk = sorted(p.name for p in (tmp_path / "t" / "m").glob("writes-*"))
    assert on_disk == [f"writes-{check(store).log_id}-0-8.safetensors"], "merged segments are deleted"
    # The pool file holds no long-term token any segment holds.
    (pool_file,) = (tmp_path / "t" / "m").glob("pool-*.safetensors")
    assert all(t.shape[0] == 0 for name, t in load_tensors(pool_file.read_bytes()).items() if name.startswith("ltm."))


def test_a_reopened_memory_is_the_one_written_bit_for_bit(engine, tmp_path):
    store = MemoryStore(engine, tmp_path, snapshot_every=2)
    store.create("t", "m")
    for text in TEXTS[:7]:  # snapshots after 2, 4 and 6 writes; a one-write tail
        store.inject("t", "m", [NewText(text)])
    expected = pool_tensors(store)
    reopened = MemoryStore(engine, tmp_path)  # no close(): as after a crash
    assert same(pool_tensors(reopened), expected)
    assert reopened.get("t", "m").long_term_tokens == 7 * 8


def test_segments_of_evicted_writes_are_deleted_and_a_bounded_store_reopens_the_same(bounded, tmp_path):
    store = MemoryStore(bounded, tmp_path, snapshot_every=1)
    store.create("t", "m")
    for text in TEXTS:
        store.inject("t", "m", [NewText(text)])
        segments = check(store).segments
        long_term = store._memory("t", "m").pool.long_term
        assert segments[0].first <= long_term.first < segments[0].end and segments[-1].end == long_term.end
    assert long_term.num_writes == 4 and long_term.first == len(TEXTS) - 4
    assert len(list((tmp_path / "t" / "m").glob("writes-*"))) == len(segments)
    assert same(pool_tensors(MemoryStore(bounded, tmp_path)), pool_tensors(store))


@pytest.mark.parametrize("damage", ["flipped", "missing"])
def test_a_damaged_segment_means_a_replay_and_the_next_snapshot_writes_afresh(engine, tmp_path, caplog, damage):
    store = MemoryStore(engine, tmp_path, snapshot_every=1)
    store.create("t", "m")
    for text in TEXTS[:3]:
        store.inject("t", "m", [NewText(text)])
    expected = pool_tensors(store)
    segment = sorted((tmp_path / "t" / "m").glob("writes-*"))[0]
    if damage == "flipped":
        data = bytearray(segment.read_bytes())
        data[-5] ^= 0x10
        segment.write_bytes(bytes(data))
    else:
        segment.unlink()

    reopened = MemoryStore(engine, tmp_path, snapshot_every=1)
    with caplog.at_level(logging.WARNING):
        assert same(pool_tensors(reopened), expected)
    assert "snapshot not used; replaying the whole log" in caplog.messages
    reopened.inject("t", "m", [NewText(TEXTS[3])])
    assert check(reopened).segments[-1].end == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert same(pool_tensors(MemoryStore(engine, tmp_path)), pool_tensors(reopened))
    assert "snapshot not used; replaying the whole log" not in caplog.messages


def test_a_pool_file_without_its_sealed_tokens_is_refused(engine, tmp_path):
    pool = engine.new_pool()
    for text in TEXTS[:3]:
        engine.apply(pool, engine.plan_write(text).chunks)
    path = tmp_path / "pool.safetensors"
    path.write_bytes(pool_to_bytes(pool, engine.fingerprint(), sealed_to=2))
    with pytest.raises(PoolFileError, match="saved apart, and are not here"):
        load_pool(path, engine.fingerprint())
    rows = pool.long_term.rows(0, 2)
    sealed = {f"ltm_sealed.{layer}": r for layer, r in enumerate(rows)} | {"ltm_sealed_from": torch.tensor([0])}
    assert torch.equal(load_pool(path, engine.fingerprint(), sealed=sealed).long_term.tokens, pool.long_term.tokens)
    short = {name: (r[:-1] if name != "ltm_sealed_from" else r) for name, r in sealed.items()}
    with pytest.raises(PoolFileError, match="do not hold writes 0-2"):
        load_pool(path, engine.fingerprint(), sealed=short)


def test_a_memory_snapshotted_under_older_keys_reopens_keyed_as_this_engine_keys(engine, tmp_path):
    texts = ["Tomas Quinn earns a living as a translator.", "Ottilie Brandt keeps bees.", TEXTS[0]]
    older = memagent.load("random:tiny-writes")
    keys = older.model.recall_keys
    older.model.recall_keys = LexicalKeys(older.tokenizer, keys.frame, words_alone=False)
    before = MemoryStore(older, tmp_path / "before", snapshot_every=1)
    now = MemoryStore(engine, tmp_path / "now", snapshot_every=1)
    for store in (before, now):
        store.create("t", "m")
        for text in texts:
            store.inject("t", "m", [NewText(text)])
    assert not same(pool_tensors(before), pool_tensors(now))
    assert same(pool_tensors(MemoryStore(engine, tmp_path / "before")), pool_tensors(now))
