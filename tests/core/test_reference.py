"""The model reproduces the paper's reference implementation on every shipped case (fp32, 1e-4)."""

import pytest
import torch
from safetensors.torch import load_file

from memagent import MemoryLLM
from tests.conftest import FIXTURES, REFERENCE_CASES

TOL = 1e-4


@pytest.fixture(params=REFERENCE_CASES)
def case(request):
    folder = FIXTURES / "reference" / request.param
    model = MemoryLLM.from_pretrained(folder / "checkpoint", device="cpu", dtype=torch.float32)
    return model, load_file(folder / "vectors.safetensors")


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() < TOL


@torch.no_grad()
def test_pool_loaded_from_checkpoint(case):
    model, v = case
    assert model.memory_initialized
    assert torch.equal(model.memory, v["memory_before"])


@torch.no_grad()
def test_logits_read_the_full_pool(case):
    model, v = case
    assert_close(model(v["prompt"]).logits, v["logits"])


@torch.no_grad()
@pytest.mark.parametrize("context, expected", [("long_ctx", "delta_long"), ("short_ctx", "delta_short")])
def test_new_memory_of_a_write(case, context, expected):
    model, v = case
    before = model.memory.clone()
    new = model.inject(v[context], update=False)
    assert_close(new[None], v[expected])
    assert torch.equal(model.memory, before), "update=False must leave the pool as it was"


def test_greedy_generation(case):
    model, v = case
    out = model.generate(v["prompt"], max_new_tokens=12, do_sample=False, eos_token_id=[])
    assert out.tolist() == v["greedy"].tolist()


@torch.no_grad()
def test_empty_pool_reads_ignore_memory(case):
    model, v = case
    model.reset_memory()
    assert not model.memory_initialized
    assert_close(model(v["prompt"]).logits, v["uninit_logits"])


@torch.no_grad()
def test_first_write_fills_the_pool(case):
    model, v = case
    model.reset_memory()
    model.inject(v["long_ctx"])
    assert model.memory_initialized
    assert_close(model.memory, v["first_write_memory"])


@torch.no_grad()
def test_without_bos_embedding_the_model_has_none_and_reads_only_the_pool():
    model = MemoryLLM.from_pretrained(FIXTURES / "reference" / "nobos_decoder_lora" / "checkpoint")
    assert not model.config.add_bos_embedding
    assert model.bos_embedding is None and "bos_embedding" not in model.state_dict()
    prefix = model.memory_prefix(model.pool)
    assert prefix.keys[0].shape[2] == model.config.num_memory_tokens
