"""A pool on disk: round trip, refusal of another model's pool, atomic writes."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import memagent
from memagent import MemoryLLM
from memagent.model.shapes import shape_config
from memagent.model.pool_file import PoolFileError, load_pool, long_term_size, save_pool
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


def _damaged(state: dict, metadata: dict, how: str) -> None:
    """Damage an M+ pool file's long-term part in one way a bad import could."""
    if how == "missing part":
        del metadata["long_term"]
    elif how == "other settings":
        raw = json.loads(metadata["long_term"])
        raw["config"]["num_ltm_blocks"] = 3
        metadata["long_term"] = json.dumps(raw)
    elif how == "missing tensor":
        del state["ltm_keys.1"]
    elif how == "misshapen keys":
        state["ltm_keys.0"] = state["ltm_keys.0"][:, :3].contiguous()
    elif how == "not finite":
        state["ltm.1"][0, 0] = float("nan")
    elif how == "negative ages":
        state["ltm_ages.0"][0] = -4
    elif how == "update step":
        state["ltm_update_step"] = torch.tensor(5)
    elif how == "too many pending":
        state["ltm_pending.0"] = state["ltm.0"][:8].clone()
        state["ltm_pending_keys.0"] = state["ltm_keys.0"][:8].clone()
        state["ltm_pending_ages.0"] = state["ltm_ages.0"][:8].clone()
    elif how == "metadata not json":
        metadata["long_term"] = "{"


@pytest.mark.parametrize(
    "how",
    ["missing part", "other settings", "missing tensor", "misshapen keys", "not finite", "negative ages",
     "update step", "too many pending", "metadata not json"],
)
@torch.no_grad()
def test_a_damaged_or_inconsistent_long_term_memory_is_refused_clearly(tmp_path, how):
    engine = memagent.load("random:tiny-mplus")
    pool = engine.new_pool()
    for i in range(4):
        engine.write(pool, f"Note {i}: locker {i} holds parcel {i * 7}.", progress=False)
    path = tmp_path / "p.safetensors"
    save_pool(pool, path, engine.fingerprint())
    with safe_open(str(path), framework="pt") as f:
        metadata, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    _damaged(state, metadata, how)
    save_file(state, path, metadata)
    with pytest.raises(PoolFileError, match="long-term memory|ltm"):
        engine.load_pool(path)


def test_long_term_size_is_read_from_the_header(tmp_path):
    engine = memagent.load("random:tiny-mplus")
    pool = engine.new_pool()
    for i in range(5):
        engine.write(pool, f"Note {i}: locker {i} holds parcel {i * 7}.", progress=False)
    save_pool(pool, tmp_path / "p.safetensors", engine.fingerprint())
    assert long_term_size(tmp_path / "p.safetensors") == pool.long_term.size == 32
    save_pool(MemoryLLM.from_random(shape_config("tiny")).pool, tmp_path / "q.safetensors", "x")
    assert long_term_size(tmp_path / "q.safetensors") is None
