"""Pool update rules: first write fills by repetition; later writes drop K at random, keep order, append."""

import pytest
import torch

from memagent.model.memory_pool import MemoryPool, PrefixKV

L, N, d = 3, 12, 4


def tokens(n: int, start: float = 1.0) -> torch.Tensor:
    """New memory [L, n, d] whose values tell which token (and layer) they are."""
    ids = torch.arange(n, dtype=torch.float32) + start
    layer = torch.arange(L, dtype=torch.float32)[:, None, None] * 1000
    return (ids[None, :, None] + layer).expand(L, n, d).clone()


def test_first_write_fills_by_repetition_then_the_last_remainder():
    pool = MemoryPool(torch.zeros(L, N, d))
    new = tokens(5)
    pool.write(new)
    assert pool.initialized and pool.step == 1
    # 12 // 5 = 2 copies, then the last 12 % 5 = 2 tokens.
    expected = torch.cat([new, new, new[:, 3:]], dim=1)
    assert torch.equal(pool.memory, expected)


def test_write_drops_k_keeps_order_and_appends():
    pool = MemoryPool(tokens(N, start=100.0), initialized=True)
    pool.write(tokens(4))
    values = pool.memory[0, :, 0]
    kept, appended = values[:-4], values[-4:]
    assert torch.equal(appended, torch.tensor([1.0, 2, 3, 4]))
    assert len(kept) == N - 4
    assert torch.all(kept[1:] > kept[:-1]), "kept tokens stay in their order"
    assert set(kept.tolist()) <= set(range(100, 100 + N))


def test_shared_drop_removes_the_same_positions_in_every_layer():
    pool = MemoryPool(tokens(N, start=100.0), initialized=True)
    pool.write(tokens(4))
    per_layer = pool.memory[:, :, 0] - torch.arange(L)[:, None] * 1000
    assert torch.equal(per_layer, per_layer[:1].expand(L, -1))


def test_per_layer_drop_chooses_independently():
    pool = MemoryPool(tokens(N, start=100.0), initialized=True, drop_per_layer=True, seed=3)
    pool.write(tokens(6))
    per_layer = pool.memory[:, :-6, 0] - torch.arange(L)[:, None] * 1000
    assert not all(torch.equal(per_layer[0], per_layer[i]) for i in range(1, L))


@pytest.mark.parametrize("drop_per_layer", [False, True])
def test_same_seed_same_sequence_of_pools(drop_per_layer):
    def run(seed):
        pool = MemoryPool(torch.zeros(L, N, d), seed=seed, drop_per_layer=drop_per_layer)
        for i in range(6):
            pool.write(tokens(4, start=10.0 * i))
        return pool.memory

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_reset_empties_the_pool_and_changes_its_version():
    pool = MemoryPool(torch.zeros(L, N, d))
    pool.write(tokens(4))
    version = pool.version
    pool.reset()
    assert not pool.initialized and pool.step == 0 and pool.version > version
    assert torch.count_nonzero(pool.memory) == 0


def test_clone_is_independent_and_continues_identically():
    pool = MemoryPool(torch.zeros(L, N, d), seed=1)
    pool.write(tokens(4))
    twin = pool.clone()
    pool.write(tokens(4, start=50))
    twin.write(tokens(4, start=50))
    assert torch.equal(pool.memory, twin.memory)
    twin.write(tokens(4, start=90))
    assert not torch.equal(pool.memory, twin.memory)


def test_new_memory_of_the_wrong_shape_is_rejected_and_the_pool_kept():
    pool = MemoryPool(tokens(N), initialized=True)
    before = pool.memory.clone()
    with pytest.raises(ValueError, match="does not fit"):
        pool.write(torch.zeros(L + 1, 4, d))
    assert torch.equal(pool.memory, before) and pool.step == 0


def test_to_casts_in_place_and_drops_the_cached_prefix():
    pool = MemoryPool(tokens(N), initialized=True)
    pool.prefix_kv = PrefixKV(pool.version, [], [])
    assert pool.to(dtype=torch.bfloat16) is pool
    assert pool.memory.dtype == torch.bfloat16 and pool.prefix_kv is None
    assert torch.equal(pool.memory, tokens(N).to(torch.bfloat16))
