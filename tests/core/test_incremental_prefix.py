"""After a write the memory's keys/values are updated, not recomputed: surviving tokens keep
their values and have their keys re-rotated to their new RoPE positions; only the written
tokens are projected. The result equals a full recomputation (float32, 1e-5) over many writes."""

import dataclasses

import pytest
import torch

from memagent import MemoryLLM
from memagent.model.shapes import shape_config
from tests.conftest import FIXTURES, REFERENCE_CASES

TOL = 1e-5
MPLUS_CASES = sorted(p.name for p in (FIXTURES / "reference_mplus").iterdir() if p.is_dir())


def full_prefix(model: MemoryLLM):
    """The current pool's prefix computed from scratch, leaving the cached one in place."""
    pool = model.pool
    cached, origin = pool.prefix_kv, pool.prefix_origin
    pool.prefix_kv = pool.prefix_origin = None
    full = model.memory_prefix(pool)
    pool.prefix_kv, pool.prefix_origin = cached, origin
    return full


def assert_same_prefix(actual, expected):
    for got, want in zip(actual.keys + actual.values, expected.keys + expected.values, strict=True):
        assert got.shape == want.shape and got.is_contiguous()
        assert (got - want).abs().max().item() < TOL


def write_and_compare(model: MemoryLLM, writes: int, *, read_every: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    model.inject(torch.randint(0, vocab, (1, 3 * model.config.num_tokens), generator=generator))
    model.memory_prefix(model.pool)
    for index in range(writes):
        length = int(torch.randint(1, 2 * model.config.num_tokens, (1,), generator=generator))
        model.inject(torch.randint(0, vocab, (1, length), generator=generator))
        assert model.pool.prefix_kv is not None, "a write keeps the stale prefix to update it"
        if (index + 1) % read_every == 0:
            prefix = model.memory_prefix(model.pool)
            assert prefix.version == model.pool.version and model.pool.prefix_origin is None
            assert_same_prefix(prefix, full_prefix(model))


def tiny(**overrides) -> MemoryLLM:
    config = dataclasses.replace(shape_config("tiny"), **overrides)
    return MemoryLLM.from_random(config, seed=1)


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("per_layer", [False, True])
@torch.no_grad()
def test_updated_prefix_equals_recomputation_over_many_writes(bos, per_layer):
    write_and_compare(tiny(add_bos_embedding=bos, drop_memory_per_layer=per_layer), writes=40)


@torch.no_grad()
def test_several_writes_between_reads_are_updated_at_once():
    write_and_compare(tiny(drop_memory_per_layer=True), writes=24, read_every=5)


@torch.no_grad()
def test_writes_past_every_old_token_recompute_all_of_them():
    # N = 64 tokens, K = 8 per write: 30 writes leave few if any tokens of the old prefix.
    write_and_compare(tiny(), writes=30, read_every=30)


@pytest.mark.parametrize("name", REFERENCE_CASES)
@torch.no_grad()
def test_reference_checkpoints(name):
    model = MemoryLLM.from_pretrained(FIXTURES / "reference" / name / "checkpoint", dtype=torch.float32)
    write_and_compare(model, writes=12)


@pytest.mark.parametrize("name", MPLUS_CASES)
@torch.no_grad()
def test_mplus_checkpoints_where_long_term_slots_shift_the_memory(name):
    model = MemoryLLM.from_pretrained(FIXTURES / "reference_mplus" / name / "checkpoint", dtype=torch.float32)
    assert MemoryLLM.long_term_slots(model.pool) > 0
    write_and_compare(model, writes=12)


@torch.no_grad()
def test_half_precision_recomputes_instead():
    model = tiny().to(torch.bfloat16)
    model.inject(torch.arange(100, 130)[None])
    first = model.memory_prefix(model.pool)
    model.inject(torch.arange(200, 230)[None])
    assert torch.equal(model.memory_prefix(model.pool).keys[0], full_prefix(model).keys[0])
    assert first.version != model.pool.version


@torch.no_grad()
def test_reads_after_writes_match_a_model_that_recomputes():
    updated, recomputed = tiny(), tiny()
    prompt = torch.tensor([[5, 6, 7, 8]])
    for start in range(100, 400, 30):
        for model in (updated, recomputed):
            model.inject(torch.arange(start, start + 20)[None])
        recomputed.pool.prefix_kv = None
        got, want = updated(prompt).logits, recomputed(prompt).logits
        assert (got - want).abs().max().item() < 1e-4
