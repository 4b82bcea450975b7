"""A pool on disk: round trip, refusal of another model's pool, atomic writes."""

import pytest
import torch

from memagent import MemoryLLM
from memagent.model.shapes import shape_config
from memagent.model.pool_file import PoolFileError, load_pool, save_pool
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def model():
    return MemoryLLM.from_random(shape_config("tiny"), seed=0)


def written_pool(model, n_writes=3):
    pool = model.new_pool(seed=5)
    for i in range(n_writes):
        model.inject(torch.arange(10 + i)[None] + 5 * i, pool=pool)
    return pool


@torch.no_grad()
def test_round_trip_keeps_memory_step_and_future(model, tmp_path):
    pool = written_pool(model)
    save_pool(pool, tmp_path / "p.safetensors", model.fingerprint())
    loaded = load_pool(tmp_path / "p.safetensors", model.fingerprint())
    assert torch.equal(loaded.memory, pool.memory)
    assert loaded.step == pool.step and loaded.initialized
    # The generator state travels too: the next write drops the same tokens.
    ids = torch.arange(20, 40)[None]
    model.inject(ids, pool=pool)
    model.inject(ids, pool=loaded)
    assert torch.equal(loaded.memory, pool.memory)


@torch.no_grad()
def test_pool_of_another_model_is_rejected(model, tmp_path):
    other = MemoryLLM.from_random(shape_config("tiny"), seed=1)
    save_pool(written_pool(model), tmp_path / "p.safetensors", model.fingerprint())
    with pytest.raises(PoolFileError, match="another model"):
        load_pool(tmp_path / "p.safetensors", other.fingerprint())


def test_unreadable_file_gives_a_clear_error(model, tmp_path):
    (tmp_path / "p.safetensors").write_bytes(b"not a pool")
    with pytest.raises(PoolFileError, match="not a readable pool file"):
        load_pool(tmp_path / "p.safetensors", model.fingerprint())


@torch.no_grad()
def test_save_replaces_atomically_and_leaves_no_temporary(model, tmp_path):
    path = tmp_path / "p.safetensors"
    save_pool(model.new_pool(), path, model.fingerprint())
    save_pool(written_pool(model), path, model.fingerprint())
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]
    assert load_pool(path, model.fingerprint()).step == 3


@torch.no_grad()
def test_m_plus_pool_keeps_its_long_term_memory(tmp_path):
    mplus = MemoryLLM.from_pretrained(FIXTURES / "reference_mplus" / "mha_sdpa" / "checkpoint")
    for start in (3, 30, 60):  # a merge, then tokens left pending
        mplus.inject(torch.arange(start, start + 12)[None])
    path = tmp_path / "p.safetensors"
    save_pool(mplus.pool, path, mplus.fingerprint())
    loaded = load_pool(path, mplus.fingerprint())
    prompt = torch.arange(10, 17)[None]
    for pool in (mplus.pool, loaded):  # the next write moves, merges and prunes alike
        mplus.inject(torch.arange(90, 100)[None], pool=pool)
    a, b = mplus.pool.long_term, loaded.long_term
    assert a.sizes() == b.sizes() and a.update_step == b.update_step
    assert torch.equal(a.pool_ages, b.pool_ages)
    for layer in range(a.num_layers):
        rows_a = a.stored[layer].tensors() + a.pending[layer].tensors()
        rows_b = b.stored[layer].tensors() + b.pending[layer].tensors()
        assert all(torch.equal(x, y) for x, y in zip(rows_a, rows_b))
        assert torch.equal(a.frequencies[layer], b.frequencies[layer])
    assert torch.equal(mplus(prompt, pool=loaded).logits, mplus(prompt).logits)
