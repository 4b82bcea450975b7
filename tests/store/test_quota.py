"""Per-tenant quotas: memories and bytes on disk; one tenant at its limit leaves the others alone."""

from __future__ import annotations

import pytest

from memagent.store import MemoryStore, NewText, TenantQuota
from memagent.store.errors import QuotaExceeded


def test_a_tenant_at_its_memory_limit_is_refused_and_others_are_not(tiny_engine, tmp_path):
    store = MemoryStore(tiny_engine, tmp_path, quota=TenantQuota(max_memories=2))
    store.create("a", "one")
    store.create("a", "two")
    with pytest.raises(QuotaExceeded, match="max_memories_per_tenant=2"):
        store.create("a", "three")
    with pytest.raises(QuotaExceeded, match="max_memories_per_tenant=2"):
        store.fork("a", "one", "copy")
    store.create("b", "one")  # another tenant is unaffected
    store.delete("a", "two")  # deleting makes room
    store.create("a", "three")
    assert [m.memory_id for m in store.list("a")] == ["one", "three"]


def test_a_tenant_at_its_disk_limit_is_refused_writes_and_keeps_what_it_has(tiny_engine, tmp_path):
    store = MemoryStore(tiny_engine, tmp_path, quota=TenantQuota(max_disk_bytes=6000))
    store.create("a", "m")
    store.create("b", "m")
    written = 0
    with pytest.raises(QuotaExceeded, match="max_disk_bytes_per_tenant=6000"):
        for i in range(1000):
            store.inject("a", "m", [NewText(f"Note {i}: the quick brown fox jumps over the lazy dog.")])
            written += 1
    assert 0 < written < 1000
    assert store.get("a", "m").entries == written  # the refused write stored nothing, lost nothing
    assert store.get("a", "m").disk_bytes <= 6000
    store.inject("b", "m", [NewText("Bob still writes.")])
    state = store.export("a", "m")
    with pytest.raises(QuotaExceeded, match="max_disk_bytes_per_tenant"):
        store.import_state("a", "again", state.log, state.pool)
    store.delete("a", "m")  # deleting makes room
    store.create("a", "m")
    store.inject("a", "m", [NewText("Room again.")])
