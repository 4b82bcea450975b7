"""The memory's keys/values are computed once per pool version and updated after a write."""

import torch

from memagent import MemoryLLM
from memagent.model.shapes import shape_config


@torch.no_grad()
def test_prefix_is_reused_until_a_write_and_then_updated():
    model = MemoryLLM.from_random(shape_config("tiny"), seed=0)
    model.inject(torch.arange(50, 70)[None])
    prompt = torch.tensor([[3, 4, 5]])
    first = model.memory_prefix(model.pool)
    before = model(prompt).logits
    assert model.memory_prefix(model.pool) is first, "a read must reuse the cached prefix"

    model.inject(torch.arange(200, 230)[None])
    second = model.memory_prefix(model.pool)
    assert second is not first and second.version == model.pool.version
    after = model(prompt).logits
    assert not torch.allclose(before, after), "a read after a write must see the new memory"

    model.pool.prefix_kv = None  # recompute from scratch: the updated result is the same to rounding
    assert torch.allclose(model(prompt).logits, after, atol=1e-5)


@torch.no_grad()
def test_empty_pool_has_no_prefix():
    model = MemoryLLM.from_random(shape_config("tiny"), seed=0)
    assert model.memory_prefix(model.pool) is None
    assert model.new_cache(model.pool, 1, 4).prefix_length == 0
