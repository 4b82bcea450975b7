"""Int8 reads: every linear layer reads through int8 weights; writes and the memory prefix stay
exactly the float model's, and pools move freely between a float and a quantized engine."""

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import memagent
from memagent import MemoryLLM
from memagent.model.quantized import Int8Linear, float_weights, products, quantize
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
def test_projections_of_one_input_read_in_one_product_equal_to_their_own():
    float_model, model = pair()
    layer = model.model.layers[0]
    x = torch.randn(2, 5, model.config.hidden_size)
    for a, b in ((layer.mlp.gate_proj, layer.mlp.up_proj), (layer.self_attn.k_proj, layer.self_attn.v_proj)):
        assert a.product is b.product and (a.part, b.part) == (0, 1)
        fused = products(x, a, b)
        assert all(torch.equal(y, reader(x)) for y, reader in zip(fused, (a, b), strict=True))
        # A product over both layers' int8 weights: the same as each layer's own.
        for y, reader in zip(fused, (a, b)):
            own = Int8Linear(copy.deepcopy(reader.linear))
            assert torch.allclose(y, own(x), atol=1e-6)
    q, o = layer.self_attn.q_proj, layer.self_attn.o_proj
    assert q.product is not o.product and len(q.product.sizes) == 1
    with float_weights(model):
        want = float_model.model.layers[0].mlp.gate_proj(x), float_model.model.layers[0].mlp.up_proj(x)
        assert all(torch.equal(y, w) for y, w in zip(products(x, layer.mlp.gate_proj, layer.mlp.up_proj), want))


@torch.no_grad()
def test_compiled_int8_decode_steps_give_the_eager_tokens_and_copies_read_alike():
    torch._dynamo.reset()
    counters.clear()
    eager = memagent.load("random:tiny", quantize="int8")
    compiled = memagent.load("random:tiny", quantize="int8", compile_decode=True)
    compiled.prepare_decode()
    assert counters["stats"]["unique_graphs"] == 2, "a row's step and the lane's, each compiled whole"
    copied = copy.deepcopy(eager.model)
    for engine in (eager, compiled):
        engine.pool("alice").inject("Alice keeps bees on the roof of the old mill.")
    prompt = "Alice keeps"
    want = eager.pool("alice").generate(prompt, max_new_tokens=10)
    assert compiled.pool("alice").generate(prompt, max_new_tokens=10) == want
    assert counters["stats"]["unique_graphs"] == 2, "no compile at the first request"
    ids = torch.arange(5, 25)[None]
    assert torch.equal(copied(ids).logits, eager.model(ids).logits)


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
