"""Store calls as step generators: one forward pass per step, the call's result at the end, and
a call closed between steps leaves the memory as if it never ran or, once logged, as its log says."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_tensors

from memagent.sampling import SamplingParams
from memagent.store import MemoryStore, NewText
from memagent.store.memory_store import run_to_end

FACTS = ["Ann's dog is named Rex.", "The meeting moved to Tuesday.", "Ben's favourite colour is teal."]
LONG = "Ann keeps a diary" + " and more" * 350 + "."  # more than one chunk


def _steps(steps, applies):
    """Drive `steps`; the chunks written by each step, and the result."""
    per_step = []
    while True:
        before = applies.chunks
        try:
            next(steps)
        except StopIteration as done:
            per_step.append(applies.chunks - before)
            return per_step, done.value
        per_step.append(applies.chunks - before)


def _pool(store: MemoryStore, memory: str) -> torch.Tensor:
    return load_tensors(store.export("t", memory).pool)["memory"]


def _chunks(store: MemoryStore, memory: str) -> int:
    return sum(len(e.chunks) for e in store.entries("t", memory))


def _filled(store: MemoryStore, memory: str, texts=(*FACTS, LONG)) -> MemoryStore:
    store.create("t", memory)
    store.inject("t", memory, [NewText(t) for t in texts])
    return store


def _on_disk(tiny_engine, tmp_path, memory: str = "m") -> MemoryStore:
    """A store whose memory `memory` is on disk as a log with no snapshot: its next use replays it."""
    never = {"snapshot_every": 10_000, "replay_seconds": float("inf")}
    _filled(MemoryStore(tiny_engine, tmp_path, **never), memory)
    return MemoryStore(tiny_engine, tmp_path, **never)


def test_inject_writes_one_chunk_per_step(tiny_engine, tmp_path, applies):
    store = MemoryStore(tiny_engine, tmp_path)
    store.create("t", "m")
    per_step, receipts = _steps(store.inject_steps("t", "m", [NewText(t) for t in (*FACTS, LONG)]), applies)
    assert max(per_step) == 1
    assert sum(per_step) == _chunks(store, "m") > len(FACTS) + 1
    assert [r.entry_id for r in receipts] == [1, 2, 3, 4]
    assert [r.step for r in receipts] == [e.step for e in store.entries("t", "m")]
    assert torch.equal(_pool(store, "m"), _pool(_filled(store, "at-once"), "at-once"))


@pytest.mark.parametrize("call", ["inject", "generate", "fork", "export"])
def test_a_reopened_memory_replays_its_log_one_chunk_per_step(tiny_engine, tmp_path, applies, call):
    store = _on_disk(tiny_engine, tmp_path)
    steps = {
        "inject": lambda: store.inject_steps("t", "m", [NewText("One more.")]),
        "generate": lambda: iter(store.generate("t", "m", "Ann's dog is", SamplingParams(max_new_tokens=2))),
        "fork": lambda: store.fork_steps("t", "m", "copy"),
        "export": lambda: store.export_steps("t", "m"),
    }[call]()
    per_step, _ = _steps(steps, applies)
    assert max(per_step) == 1
    assert sum(per_step) == _chunks(store, "m")  # the replay, and for inject its one chunk


def test_forget_rebuilds_one_chunk_per_step_and_changes_nothing_until_its_end(tiny_engine, tmp_path, applies):
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    before = _pool(store, "m")
    closed = store.forget_steps("t", "m", [2])
    next(closed)
    next(closed)
    closed.close()
    assert [e.entry_id for e in store.entries("t", "m")] == [1, 2, 3, 4]
    assert torch.equal(_pool(store, "m"), before)
    per_step, info = _steps(store.forget_steps("t", "m", [2]), applies)
    assert max(per_step) == 1
    assert info.entries == 3
    assert torch.equal(_pool(store, "m"), _pool(_filled(store, "never-told", [FACTS[0], FACTS[2], LONG]), "never-told"))


def test_import_without_a_pool_replays_one_chunk_per_step(tiny_engine, tmp_path, applies):
    store = _filled(MemoryStore(tiny_engine, tmp_path), "m")
    state = store.export("t", "m")
    per_step, info = _steps(store.import_steps("t", "copy", state.log, None), applies)
    assert max(per_step) == 1
    assert sum(per_step) == _chunks(store, "m")
    assert info.step == state.step
    assert torch.equal(_pool(store, "copy"), _pool(store, "m"))


def test_an_inject_closed_before_its_log_append_writes_nothing(tiny_engine, tmp_path):
    store = _on_disk(tiny_engine, tmp_path)
    steps = store.inject_steps("t", "m", [NewText("Never written.")])
    next(steps)  # replaying the reopened memory: nothing logged yet
    steps.close()
    assert [e.text for e in store.entries("t", "m")] == [*FACTS, LONG]
    assert torch.equal(_pool(store, "m"), _pool(_filled(store, "same"), "same"))


def test_an_inject_closed_after_its_log_append_is_applied_once_by_the_next_use(tiny_engine, tmp_path):
    store = MemoryStore(tiny_engine, tmp_path, snapshot_every=10_000, replay_seconds=float("inf"))
    store.create("t", "m")
    steps = store.inject_steps("t", "m", [NewText(t) for t in (*FACTS, LONG)])
    next(steps)
    next(steps)  # logged, two chunks applied
    steps.close()
    assert store.get("t", "m").residency == "disk"  # the half-written pool was dropped
    assert len(store.entries("t", "m")) == 4
    expected = _pool(_filled(MemoryStore(tiny_engine, tmp_path / "ref"), "m"), "m")
    assert torch.equal(_pool(store, "m"), expected)
    assert torch.equal(_pool(MemoryStore(tiny_engine, tmp_path), "m"), expected)  # after a restart too


def test_a_read_of_a_reopened_memory_starts_after_empty_pieces(tiny_engine, tmp_path):
    params = SamplingParams(max_new_tokens=3)
    resident = _filled(MemoryStore(tiny_engine, tmp_path / "resident"), "m")
    expected = "".join(resident.generate("t", "m", "Ann's dog is", params))
    store = _on_disk(tiny_engine, tmp_path / "disk")
    generation = store.generate("t", "m", "Ann's dog is", params)
    replayed = []
    for piece in generation:
        if generation.started:
            break
        replayed.append(piece)
    assert replayed == [""] * _chunks(store, "m")
    assert piece + "".join(generation) == expected


def test_run_to_end_returns_the_result():
    def steps():
        yield
        yield
        return "done"

    assert run_to_end(steps()) == "done"


def test_a_pool_evicted_during_a_write_is_not_snapshotted_half_written(tiny_engine, tmp_path):
    store = MemoryStore(tiny_engine, tmp_path, snapshot_every=1, device_bytes=int(tiny_engine.pool_nbytes * 1.5))
    store.create("t", "m")
    store.create("t", "other")
    steps = store.inject_steps("t", "m", [NewText(t) for t in (*FACTS, LONG)])
    next(steps)  # logged, one chunk applied
    store.inject("t", "other", [NewText("Room for one pool only: m goes to disk.")])
    assert store.get("t", "m").residency == "disk"
    assert [r.entry_id for r in run_to_end(steps)] == [1, 2, 3, 4]
    assert not list((tmp_path / "t" / "m").glob("pool-*"))
    expected = _pool(_filled(MemoryStore(tiny_engine, tmp_path / "ref"), "m"), "m")
    assert torch.equal(_pool(store, "m"), expected)
