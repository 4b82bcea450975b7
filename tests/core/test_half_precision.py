"""Half precision end to end on the CPU: every way of building a model in bfloat16, or moving
one there, gives a pool in bfloat16 that writes, reads, generates and saves like float32."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import memagent
from memagent import MemoryLLM, default_model
from memagent.model.memory_pool import MemoryPool
from memagent.model.pool_file import load_pool, save_pool
from memagent.model.shapes import shape_config
from tests.conftest import FIXTURES

HALF = torch.bfloat16


def assert_close(half: torch.Tensor, full: torch.Tensor) -> None:
    """bfloat16 keeps about 3 significant digits; errors stay a small fraction of the scale."""
    assert half.dtype == HALF and half.shape == full.shape
    assert (half.float() - full).abs().max() <= 0.03 * full.abs().max()


@torch.no_grad()
def check_like_float32(half: MemoryLLM, full: MemoryLLM, ids: torch.Tensor, tmp_path) -> None:
    """`half` writes and reads as `full` does (to bfloat16 precision); its pool saves and loads."""
    assert half.memory.dtype == HALF
    for model in (half, full):
        model.inject(ids[:, :10])
        model.inject(ids[:, 10:])  # a second write reads the first one's pool
    assert_close(half.memory, full.memory)
    assert_close(half(ids).logits, full(ids).logits)
    generated = half.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=[])
    assert generated.shape == (1, 6)

    path = tmp_path / "pool.safetensors"
    save_pool(half.pool, path, half.fingerprint())
    loaded = load_pool(path, half.fingerprint(), dtype=half.dtype)
    assert torch.equal(loaded.memory, half.memory) and loaded.step == 2
    assert torch.equal(half.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=[], pool=loaded), generated)


def ids_for(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A small Llama saved by transformers, with the default's tokenizer beside it."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = default_model.load_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_from_base_in_bfloat16(tiny_llama, tmp_path):
    half, tokenizer = MemoryLLM.from_base(tiny_llama, num_tokens=4, num_blocks=3, dtype=HALF)
    full, _ = MemoryLLM.from_base(tiny_llama, num_tokens=4, num_blocks=3)
    check_like_float32(half, full, tokenizer("Alice keeps her bike in the blue shed by the river, next to the oak.", return_tensors="pt").input_ids, tmp_path)


def test_from_base_without_bos_embedding(tiny_llama):
    model, _ = MemoryLLM.from_base(tiny_llama, num_tokens=4, num_blocks=3, add_bos_embedding=False)
    assert model.bos_embedding is None and "bos_embedding" not in model.state_dict()


def test_from_pretrained_in_bfloat16(tmp_path):
    checkpoint = FIXTURES / "reference" / "gqa_decoder_lora" / "checkpoint"
    half = MemoryLLM.from_pretrained(checkpoint, dtype=HALF)
    full = MemoryLLM.from_pretrained(checkpoint)
    check_like_float32(half, full, ids_for(full.config.vocab_size), tmp_path)


@torch.no_grad()
def test_moving_a_model_moves_its_pool_and_keeps_rope_exact():
    config = shape_config("tiny")
    ids = ids_for(config.vocab_size)
    model = MemoryLLM.from_random(config)
    model.inject(ids)
    model(ids)  # caches the pool's keys/values in float32
    memory = model.memory.clone()

    model.to(HALF)
    built = MemoryLLM.from_random(config, dtype=HALF)
    built.pool = MemoryPool(memory.to(HALF), initialized=True)
    assert torch.equal(model.memory, built.memory)
    assert torch.equal(model(ids).logits, built(ids).logits)


def test_memagent_load_in_bfloat16_through_the_engine(tmp_path):
    half, full = memagent.load("random:tiny", dtype=HALF), memagent.load("random:tiny")
    fact = "Alice's favourite colour is teal, and she keeps a spare key under the third plant pot."
    for engine in (half, full):
        engine.pool("a").inject(fact, progress=False)
    assert_close(half.pool("a").pool.memory, full.pool("a").pool.memory)
    answer = half.pool("a").ask("What is Alice's favourite colour?", max_new_tokens=6)

    half.pool("a").save(tmp_path / "a.safetensors")
    again = half.pool("b")
    again.load(tmp_path / "a.safetensors")
    assert again.pool.memory.dtype == HALF and again.step == 1
    assert again.ask("What is Alice's favourite colour?", max_new_tokens=6) == answer


@pytest.mark.gpu
@torch.no_grad()
def test_a_model_moved_to_cuda_takes_its_pool_along():
    config = shape_config("tiny")
    ids = ids_for(config.vocab_size)
    model = MemoryLLM.from_random(config)
    model.inject(ids)
    memory = model.memory.clone()

    model.to("cuda", HALF)
    assert model.memory.device.type == "cuda" and model.memory.dtype == HALF
    built = MemoryLLM.from_random(config, dtype=HALF).to("cuda")  # a CUDA generator would draw other weights
    built.pool = MemoryPool(memory.to("cuda", HALF), initialized=True)
    ids = ids.cuda()
    assert torch.equal(model(ids).logits, built(ids).logits)
    model.inject(ids)  # a write after the move, on the device
    eager = model.generate(ids, max_new_tokens=8, eos_token_id=[], cuda_graph=False)
    assert torch.equal(model.generate(ids, max_new_tokens=8, eos_token_id=[], cuda_graph=True), eager)
