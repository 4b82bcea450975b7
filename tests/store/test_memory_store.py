"""The memory store: recovery, snapshots, forgetting, residency, imports, crash leftovers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_tensors

from memagent.engine import Engine
from memagent.sampling import ASK_DEFAULTS, SamplingParams, Usage
from memagent.store import CorruptState, MemoryNotFound, MemoryStore, ModelMismatch, NewText

FACTS = ["Ann's dog is named Rex.", "The meeting moved to Tuesday.", "Ben's favourite colour is teal."]


def _pool(store: MemoryStore, memory: str, tenant: str = "t") -> torch.Tensor:
    return load_tensors(store.export(tenant, memory).pool)["memory"]


def _filled(store: MemoryStore, memory: str, texts=FACTS) -> MemoryStore:
    store.create("t", memory)
    store.inject("t", memory, [NewText(t) for t in texts])
    return store


def test_reopening_replays_snapshot_and_tail(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path, snapshot_every=2), "m")
    store.inject("t", "m", [NewText("One more, after the snapshot.")])
    assert list((tmp_path / "t" / "m").glob("pool-*.safetensors"))
    expected = _pool(store, "m")
    reopened = MemoryStore(tiny_engine, tmp_path)  # no close(): as after a crash
    assert reopened.get("t", "m").residency == "disk"
    assert torch.equal(_pool(reopened, "m"), expected)


def test_a_stale_or_broken_snapshot_is_ignored(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path, snapshot_every=1), "m")
    expected = _pool(store, "m")
    for snapshot in (tmp_path / "t" / "m").glob("pool-*.safetensors"):
        snapshot.write_bytes(b"not a pool")
    assert torch.equal(_pool(MemoryStore(tiny_engine, tmp_path), "m"), expected)


def test_forget_equals_never_told(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    _filled(store, "without", [FACTS[0], FACTS[2]])
    assert store.forget("t", "m", [2]).entries == 2
    assert torch.equal(_pool(store, "m"), _pool(store, "without"))
    assert [e.entry_id for e in store.entries("t", "m")] == [1, 3]
    assert [e.step for e in store.entries("t", "m")] == [1, 2]
    # After a restart too, and new entries never reuse a forgotten id.
    reopened = MemoryStore(tiny_engine, tmp_path)
    assert torch.equal(_pool(reopened, "m"), _pool(store, "without"))
    assert reopened.inject("t", "m", [NewText("New.")])[0].entry_id == 4


def test_budget_moves_old_pools_to_disk_and_back(tiny_engine, tmp_path):
    pool_bytes = tiny_engine.pool_nbytes
    store = MemoryStore(tiny_engine, tmp_path, device_bytes=int(pool_bytes * 2.5), snapshot_every=100)
    for name in ("a", "b", "c", "d"):
        _filled(store, name)
    assert store.resident() == {"device": 2, "host": 0}
    assert store.get("t", "a").residency == "disk"
    assert not list((tmp_path / "t" / "a").glob("pool-*.safetensors"))  # a short log is its own record
    unbounded = _filled(MemoryStore(tiny_engine, tmp_path / "ref"), "a")
    assert torch.equal(_pool(store, "a"), _pool(unbounded, "a"))
    assert store.get("t", "a").residency == "device"


def test_close_snapshots_a_tail_worth_one(tiny_engine, tmp_path):
    _filled(MemoryStore(tiny_engine, tmp_path, snapshot_every=100), "m")
    store = MemoryStore(tiny_engine, tmp_path, snapshot_every=2)
    expected = _pool(store, "m")  # replays a tail of 3 writes
    assert not list((tmp_path / "t" / "m").glob("pool-*.safetensors"))
    store.close()
    assert len(list((tmp_path / "t" / "m").glob("pool-*.safetensors"))) == 1
    assert torch.equal(_pool(MemoryStore(tiny_engine, tmp_path), "m"), expected)


def test_a_short_log_is_all_a_memory_keeps_on_disk(tiny_engine, tmp_path):
    """Snapshots are shortcuts: none while replaying the log costs less than loading one."""
    store = _filled(MemoryStore(tiny_engine, tmp_path, snapshot_every=8, device_bytes=0), "m")
    store.fork("t", "m", "copy")
    store.forget("t", "copy", [1])
    store.close()
    for name in ("m", "copy"):
        assert [p.name for p in (tmp_path / "t" / name).iterdir()] == ["log.wal"]
        assert store.get("t", name).disk_bytes < 2000 < tiny_engine.pool_nbytes
    reopened = MemoryStore(tiny_engine, tmp_path)
    assert torch.equal(_pool(reopened, "m"), _pool(store, "m"))
    assert torch.equal(_pool(reopened, "copy"), _pool(_filled(store, "never-told", FACTS[1:]), "never-told"))


def test_a_rewritten_log_leaves_no_stale_snapshot(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path, snapshot_every=1), "m")
    assert len(list((tmp_path / "t" / "m").glob("pool-*.safetensors"))) == 1
    store.snapshot_every = 100
    store.reset("t", "m")
    assert not list((tmp_path / "t" / "m").glob("pool-*"))


def test_tenants_and_ids(tiny_engine, tmp_path):
    store = MemoryStore(tiny_engine, tmp_path)
    store.create("t", "same")
    store.create("u", "same")
    assert [m.memory_id for m in store.list("u")] == ["same"]
    assert store.list("nobody") == []


def test_crash_leftovers_are_cleaned(tiny_engine, tmp_path):
    _filled(MemoryStore(tiny_engine, tmp_path), "m")
    (tmp_path / "t" / ".new-x-123").mkdir()
    (tmp_path / "t" / ".deleted-y-456").mkdir()
    store = MemoryStore(tiny_engine, tmp_path)
    assert [m.memory_id for m in store.list("t")] == ["m"]
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["m"]


def test_import_checks_what_it_is_given(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    state = store.export("t", "m")
    with pytest.raises(CorruptState, match="cut short"):
        store.import_state("t", "x", state.log[:-4], state.pool)
    with pytest.raises(CorruptState, match="imported pool"):
        store.import_state("t", "x", state.log, b"garbage")
    other = MemoryStore(tiny_engine, tmp_path / "other")
    other.fingerprint = "0" * 16  # as if another model ran it
    with pytest.raises(ModelMismatch, match="written by model"):
        other.import_state("t", "x", state.log, state.pool)
    assert [m.memory_id for m in store.list("t")] == ["m"]
    replayed = store.import_state("t", "y", state.log, None)  # no pool: rebuilt from the log
    assert replayed.step == store.get("t", "m").step
    assert torch.equal(_pool(store, "y"), _pool(store, "m"))


class _CountingTokenizer:
    """The engine's tokenizer, remembering the texts it was called on."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls: list = []

    def __call__(self, text, *args, **kwargs):
        self.calls.append(text)
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_read_reports_its_usage_and_tokenizes_the_prompt_once(tiny_engine, tmp_path):
    tokenizer = _CountingTokenizer(tiny_engine.tokenizer)
    store = _filled(MemoryStore(Engine(tiny_engine.model, tokenizer), tmp_path), "m")
    tokenizer.calls.clear()
    generation = store.generate("t", "m", "Ann's dog is", SamplingParams(max_new_tokens=4))
    assert generation.usage is None
    assert "".join(generation)
    assert tokenizer.calls == [["Ann's dog is"]]
    assert generation.usage == Usage(len(tiny_engine.encode("Ann's dog is")), 4, "length", len(FACTS))


def test_ask_ends_at_a_newline_within_its_default_length(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    generation = store.ask("t", "m", "What is the dog called?")
    answer = "".join(generation)
    assert "\n" not in answer
    usage = generation.usage
    assert usage.completion_tokens <= ASK_DEFAULTS.max_new_tokens
    assert usage.finish_reason == ("length" if usage.completion_tokens == ASK_DEFAULTS.max_new_tokens else "stop")


def test_a_short_answer_is_finished_with_its_last_piece(tiny_engine, tmp_path):
    """A reader (the server's worker) learns that a read ended without another step."""
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    for tokens in (1, 3):
        generation = store.generate("t", "m", "Ann's dog is", SamplingParams(max_new_tokens=tokens))
        pieces = [next(generation) for _ in range(tokens)]
        assert generation.finished and generation.usage.completion_tokens == tokens
        assert pieces and next(generation, None) is None


def test_a_read_looks_its_memory_up_in_its_first_step(tiny_engine, tmp_path):
    store = MemoryStore(tiny_engine, tmp_path)
    generation = store.ask("t", "nowhere", "What is the dog called?")  # built anywhere: it does nothing yet
    with pytest.raises(MemoryNotFound, match="nowhere"):
        next(generation)


def test_a_write_to_a_memory_being_read_leaves_its_reads_ready(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    "".join(store.generate("t", "m", "Ann's dog is", SamplingParams(max_new_tokens=1)))
    store.inject("t", "m", [NewText("Cleo's parrot is called Kiwi.")])
    pool = store.tenants["t"]["m"].pool
    assert pool.prefix_kv is not None and pool.prefix_kv.version == pool.version


def test_a_closed_read_is_cancelled(tiny_engine, tmp_path):
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    generation = store.generate("t", "m", "Ann's dog is", SamplingParams(max_new_tokens=8))
    next(generation)
    generation.close()
    assert generation.usage.finish_reason == "cancelled" and generation.usage.completion_tokens == 1


def test_a_tail_slow_to_replay_is_snapshotted_before_snapshot_every(tiny_engine, tmp_path):
    fast = MemoryStore(tiny_engine, tmp_path / "fast", snapshot_every=100)  # replay budget: 2 s
    slow = MemoryStore(tiny_engine, tmp_path / "slow", snapshot_every=100, replay_seconds=0.0)
    for store in (fast, slow):
        store.create("t", "m")
        store.inject("t", "m", [NewText("One sentence.")])
    assert not list((tmp_path / "fast" / "t" / "m").glob("pool-*.safetensors"))  # replays in milliseconds
    assert len(list((tmp_path / "slow" / "t" / "m").glob("pool-*.safetensors"))) == 1
