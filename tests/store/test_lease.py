"""One writer per memory on shared storage: leases, and stores sharing one data directory."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from safetensors.torch import load as load_tensors

import memagent
from memagent.store import MemoryNotFound, MemoryStore, NewText
from memagent.store.lease import Lease, LeaseLost, read_lease


def _pool(store: MemoryStore, memory: str) -> torch.Tensor:
    return load_tensors(store.export("t", memory).pool)["memory"]


def test_the_older_holder_changes_nothing(tmp_path):
    first = Lease.take(tmp_path, "a")
    second = Lease.take(tmp_path, "b")
    assert (first.epoch, second.epoch) == (1, 2)
    assert not first.held() and second.held()
    ran = []
    with pytest.raises(LeaseLost):
        with first.fenced():
            ran.append("old holder")
    with second.fenced():
        ran.append("new holder")
    assert ran == ["new holder"]
    assert read_lease(tmp_path)["owner"] == "b"


def test_a_lease_never_matches_a_memory_created_again(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    old = Lease.take(folder, "a")
    shutil.rmtree(folder)
    with pytest.raises(LeaseLost, match="deleted"):
        with old.fenced():
            pass
    folder.mkdir()
    again = Lease.take(folder, "b")
    assert again.epoch == old.epoch  # a new folder starts over; the holder id tells them apart
    assert not old.held()


def test_stores_sharing_storage_take_turns_and_see_every_write(tiny_engine, tmp_path):
    a = MemoryStore(tiny_engine, tmp_path, shared=True, owner="a", snapshot_every=2)
    b = MemoryStore(tiny_engine, tmp_path, shared=True, owner="b", snapshot_every=2)
    a.create("t", "m")
    a.inject("t", "m", [NewText("Ann's dog is named Rex."), NewText("The meeting moved to Tuesday.")])
    a_pool = _pool(a, "m")
    # b finds the memory a created, takes it over and appends after a's entries.
    assert b.inject("t", "m", [NewText("Ben's favourite colour is teal.")])[0].entry_id == 3
    assert read_lease(tmp_path / "t" / "m")["owner"] == "b"
    # a's copy is stale: a reloads from storage before answering, never serving its old pool.
    assert a.get("t", "m").entries == 3
    assert not torch.equal(_pool(a, "m"), a_pool)
    assert torch.equal(_pool(a, "m"), _pool(b, "m"))
    assert a.inject("t", "m", [NewText("One more.")])[0].entry_id == 4
    assert [e.entry_id for e in b.entries("t", "m")] == [1, 2, 3, 4]
    # What either store wrote is what a single server opening the folder replays.
    single = MemoryStore(tiny_engine, tmp_path)
    assert torch.equal(_pool(single, "m"), _pool(b, "m"))
    assert [m.memory_id for m in b.list("t")] == ["m"]
    b.delete("t", "m")
    with pytest.raises(MemoryNotFound):
        a.get("t", "m")
    assert a.list("t") == []


def test_a_store_that_lost_the_lease_changes_nothing_and_drops_its_copy(tiny_engine, tmp_path):
    a = MemoryStore(tiny_engine, tmp_path, shared=True, owner="a", snapshot_every=100)
    b = MemoryStore(tiny_engine, tmp_path, shared=True, owner="b", snapshot_every=100)
    a.create("t", "m")
    a.inject("t", "m", [NewText("Ann's dog is named Rex.")])  # a's pool, not yet snapshotted
    b.inject("t", "m", [NewText("Ben's favourite colour is teal.")])
    b.close()  # the holder's snapshot, at step 2
    snapshots = {p.name: p.read_bytes() for p in (tmp_path / "t" / "m").glob("pool-*.safetensors")}
    assert a.resident() == {"device": 1, "host": 0}
    a.snapshot_every = 1  # a's one write since its last snapshot is now worth one
    a.close()  # a would snapshot its stale pool (step 1): refused
    assert {p.name: p.read_bytes() for p in (tmp_path / "t" / "m").glob("pool-*.safetensors")} == snapshots
    assert a.resident() == {"device": 0, "host": 0}
    assert a.get("t", "m").step == 2  # and the next call reloads from storage


def test_concurrent_writers_lose_no_write_and_duplicate_none(tmp_path):
    """Two stores (two servers) writing one memory at once, each through its own engine."""
    stores = [
        MemoryStore(memagent.load("random:tiny"), tmp_path, shared=True, owner=o, snapshot_every=3) for o in "ab"
    ]
    stores[0].create("t", "m")
    acked: dict[str, int] = {}
    refused = []

    def write(store: MemoryStore, name: str) -> None:
        for i in range(12):
            text = f"Note {i} from {name}."
            try:
                acked[text] = store.inject("t", "m", [NewText(text)])[0].entry_id
            except LeaseLost:
                refused.append(text)

    threads = [threading.Thread(target=write, args=(s, s.owner)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = MemoryStore(stores[0].engine, tmp_path).entries("t", "m")
    # Exactly the acknowledged writes, each once, with the ids and steps they were acknowledged with.
    assert {e.text: e.entry_id for e in entries} == acked
    assert len(entries) == len(acked) == 24 - len(refused)
    assert [e.step for e in entries] == list(range(1, len(entries) + 1))
    assert read_lease(tmp_path / "t" / "m")["epoch"] > 2  # the memory really moved back and forth
    single = MemoryStore(stores[0].engine, tmp_path)
    for store in stores:
        assert torch.equal(_pool(store, "m"), _pool(single, "m"))


def test_without_shared_storage_no_lease_is_taken(tiny_engine, tmp_path):
    store = MemoryStore(tiny_engine, tmp_path)
    store.create("t", "m")
    store.inject("t", "m", [NewText("Ann's dog is named Rex.")])
    assert read_lease(tmp_path / "t" / "m") is None
