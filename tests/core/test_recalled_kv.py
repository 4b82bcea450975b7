"""Keys and values of recalled whole writes, kept between reads: the same reads as projecting
them each time, never another store's or an old write's, and within their budget."""

import pytest
import torch

import memagent
from memagent import MemoryLLM
from memagent.model.config import MemoryLLMConfig
from memagent.model.recalled_kv import RecalledKV
from memagent.model.shapes import SHAPES


@pytest.fixture
def model() -> MemoryLLM:
    return MemoryLLM.from_random(MemoryLLMConfig(**SHAPES["tiny-writes"]), seed=4)


def written(model: MemoryLLM, seed: int, writes: int):
    pool = model.new_pool(seed=seed)
    for j in range(writes):
        model.inject((torch.arange(20) * (j + seed + 3))[None] % 200, pool=pool)
    return pool


PROMPTS = torch.tensor([[5, 9, 12, 40, 41], [60, 61, 3, 9, 27]])


def projected_each_time(model: MemoryLLM, pool) -> torch.Tensor:
    with torch.no_grad():  # outside inference mode reads project every recalled write
        return model(PROMPTS, pool=pool).logits


def kept(model: MemoryLLM, pool) -> torch.Tensor:
    with torch.inference_mode():
        return model(PROMPTS, pool=pool).logits


def test_reads_with_kept_keys_and_values_are_the_reads_that_project_them(model):
    pool = written(model, 1, 5)
    expected = projected_each_time(model, pool)
    first = kept(model, pool)  # projects and keeps
    entries = len(model.recalled_kv)
    assert 0 < entries <= 5 * model.config.num_hidden_layers
    again = kept(model, pool)  # reads what it kept
    assert len(model.recalled_kv) == entries
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)


def test_other_stores_a_reset_and_evictions_never_read_what_was_kept_for_other_writes(model):
    a, b = written(model, 1, 4), written(model, 2, 4)
    kept(model, a)
    torch.testing.assert_close(kept(model, b), projected_each_time(model, b), rtol=0, atol=1e-5)
    a.reset()  # write numbers start again from 0, for other tokens
    for j in range(3):
        model.inject((torch.arange(25) * (j + 11))[None] % 200, pool=a)
    torch.testing.assert_close(kept(model, a), projected_each_time(model, a), rtol=0, atol=1e-5)
    bounded = written(model, 3, 3)
    kept(model, bounded)
    bounded.long_term.limit(2 * bounded.long_term.slots)  # evicts the oldest: indices move, numbers do not
    for j in range(4):
        model.inject((torch.arange(20) * (j + 17))[None] % 200, pool=bounded)
        torch.testing.assert_close(kept(model, bounded), projected_each_time(model, bounded), rtol=0, atol=1e-5)


def test_kept_keys_and_values_stay_within_their_budget(model):
    pool = written(model, 1, 6)
    kept(model, pool)
    one_write_layer = model.recalled_kv.nbytes // len(model.recalled_kv)
    model.recalled_kv = RecalledKV(max_bytes=3 * one_write_layer)
    expected = projected_each_time(model, pool)
    for _ in range(2):
        torch.testing.assert_close(kept(model, pool), expected, rtol=0, atol=1e-5)
        assert len(model.recalled_kv) == 3 and model.recalled_kv.nbytes <= 3 * one_write_layer


def test_a_cast_or_training_drops_what_was_kept(model):
    pool = written(model, 1, 3)
    kept(model, pool)
    model.train()
    assert len(model.recalled_kv) == 0
    kept(model, pool)
    assert len(model.recalled_kv) == 0, "nothing is kept while the weights may change"
    model.eval()
    kept(model, pool)
    model.to(torch.float64)
    assert len(model.recalled_kv) == 0
    pool.to(model.device, torch.float64)
    torch.testing.assert_close(kept(model, pool), projected_each_time(model, pool), rtol=0, atol=1e-10)



def test_a_write_keeps_its_keys_and_values_for_the_read_after_it():
    engine = memagent.load("random:tiny-writes")
    model, pool = engine.model, engine.new_pool()
    for writes, text in enumerate(("Ada keeps bees.", "Bo sails a green boat.", "Cy plays the oboe."), 1):
        engine.write(pool, text, progress=False)
        assert len(model.recalled_kv) == writes * model.config.num_hidden_layers, "every layer's, of the newest write"
    torch.testing.assert_close(kept(model, pool), projected_each_time(model, pool), rtol=0, atol=1e-5)
    assert len(model.recalled_kv) == 3 * model.config.num_hidden_layers, "the read found them kept"
