"""Int8 reads: every linear layer reads through int8 weights; writes and the memory prefix stay
exactly the float model's, and pools move freely between a float and a quantized engine."""

import pytest
import torch
from torch import nn

import memagent
from memagent import MemoryLLM
from memagent.model.quantized import Int8Linear, quantize
from memagent.model.shapes import shape_config


def pair() -> tuple[MemoryLLM, MemoryLLM]:
    config = shape_config("tiny")
    return MemoryLLM.from_random(config, seed=3), quantize(MemoryLLM.from_random(config, seed=3), "int8")


def test_every_linear_layer_reads_int8_and_the_model_keeps_its_device_and_dtype():
    _, model = pair()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    wrapped = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(wrapped) == len(linears) == 7 * model.config.num_hidden_layers + 1  # + lm_head
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert quantize(model, "int8") is model and len([m for m in model.modules() if isinstance(m, Int8Linear)]) == len(wrapped)


@torch.no_grad()
def test_writes_are_exactly_the_float_models_and_the_fingerprint_is_unchanged():
    float_model, int8_model = pair()
    for start in (100, 300, 700):
        ids = torch.arange(start, start + 30)[None]
        assert torch.equal(float_model.inject(ids), int8_model.inject(ids))
    assert torch.equal(float_model.memory, int8_model.memory)
    assert float_model.fingerprint() == int8_model.fingerprint()


@torch.no_grad()
def test_reads_stay_close_to_float():
    float_model, int8_model = pair()
    for model in (float_model, int8_model):
        model.inject(torch.arange(100, 140)[None])
    prompt = torch.arange(5, 25)[None]
    want, got = float_model(prompt).logits, int8_model(prompt).logits
    assert not torch.equal(want, got), "the int8 path must be the one reading"
    assert (got - want).norm() / want.norm() < 0.05
    assert torch.allclose(got.softmax(-1), want.softmax(-1), atol=0.02)


@torch.no_grad()
def test_the_memory_prefix_is_the_float_models_and_is_updated_on_writes():
    float_model, int8_model = pair()
    for start in (100, 200, 300):
        for model in (float_model, int8_model):
            model.inject(torch.arange(start, start + 30)[None])
            model.memory_prefix(model.pool)
        want, got = float_model.memory_prefix(float_model.pool), int8_model.memory_prefix(int8_model.pool)
        for a, b in zip(got.keys + got.values, want.keys + want.values, strict=True):
            assert torch.equal(a, b)


def test_a_pool_written_by_the_float_engine_is_read_by_the_int8_engine(tmp_path):
    float_engine = memagent.load("random:tiny")
    int8_engine = memagent.load("random:tiny", quantize="int8")
    pool = float_engine.pool("alice")
    pool.inject("Alice's favourite colour is teal.")
    pool.save(tmp_path / "alice.safetensors")
    loaded = int8_engine.pool("alice")
    loaded.load(tmp_path / "alice.safetensors")
    assert torch.equal(loaded.pool.memory, pool.pool.memory) and loaded.pool.step == pool.pool.step
    assert loaded.generate("Alice likes", max_new_tokens=4)


def test_unknown_schemes_and_unsupported_models_are_refused():
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        memagent.load("random:tiny", quantize="int4")
    with pytest.raises(ValueError, match="float32"):
        quantize(MemoryLLM.from_random(shape_config("tiny"), dtype=torch.bfloat16), "int8")
