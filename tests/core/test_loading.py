"""Loading: the released format (sharded too), hub ids offline, and any Llama-family base."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from memagent import MemoryLLM
from memagent import default_model
from memagent.model.loading import CheckpointError
from tests.conftest import FIXTURES

CASE = FIXTURES / "reference" / "gqa_decoder_lora"


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    state = load_file(CASE / "checkpoint" / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(CASE / "checkpoint" / "config.json", tmp_path)
    prompt = load_file(CASE / "vectors.safetensors")["prompt"]
    with torch.no_grad():
        sharded = MemoryLLM.from_pretrained(tmp_path)(prompt).logits
        single = MemoryLLM.from_pretrained(CASE / "checkpoint")(prompt).logits
    assert torch.equal(sharded, single)


def test_hub_id_without_network_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="could not fetch 'YuWangX/memoryllm-8b'"):
        MemoryLLM.from_pretrained("YuWangX/memoryllm-8b")


def copy_checkpoint(tmp_path, **config_changes):
    shutil.copy(CASE / "checkpoint" / "model.safetensors", tmp_path)
    config = json.loads((CASE / "checkpoint" / "config.json").read_text()) | config_changes
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_released_8b_config_style_loads(tmp_path):
    """MemoryLLM-8B's config.json says model_type "llama" and architectures ["MemoryLLM"]."""
    folder = copy_checkpoint(tmp_path, model_type="llama", architectures=["MemoryLLM"])
    prompt = load_file(CASE / "vectors.safetensors")["prompt"]
    with torch.no_grad():
        assert torch.equal(MemoryLLM.from_pretrained(folder)(prompt).logits, MemoryLLM.from_pretrained(CASE / "checkpoint")(prompt).logits)


def test_missing_folder_and_wrong_model_type_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        MemoryLLM.from_pretrained(tmp_path / "nowhere")
    copy_checkpoint(tmp_path, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(CheckpointError, match="not a MemoryLLM checkpoint"):
        MemoryLLM.from_pretrained(tmp_path)


def test_first_memoryllm_7b_layout_is_refused_by_name(tmp_path):
    copy_checkpoint(tmp_path, split_positional_embedding=True, interpolate_position_ids=True)
    with pytest.raises(CheckpointError, match="first MemoryLLM-7B layout"):
        MemoryLLM.from_pretrained(tmp_path)


def test_lora_weights_without_lora_config_are_rejected(tmp_path):
    copy_checkpoint(tmp_path, lora_config=None)
    with pytest.raises(CheckpointError, match="no lora_config"):
        MemoryLLM.from_pretrained(tmp_path)


ROPE = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
}


@pytest.mark.parametrize("rope", list(ROPE))
@pytest.mark.parametrize("tied", [False, True])
def test_from_base_with_an_empty_pool_is_the_base_model(tmp_path, rope, tied):
    parameters = {"rope_theta": 10000.0, "rope_type": "default"} | (ROPE[rope] or {})
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rope_parameters=parameters, tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    base = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    model = MemoryLLM.from_hf_model(base, num_tokens=4, num_blocks=3)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-5)


def test_from_base_reads_the_default_gguf():
    model, tokenizer = MemoryLLM.from_base(default_model.gguf_path(), num_tokens=8, num_blocks=2)
    assert model.config.num_memory_tokens == 16 and not model.memory_initialized
    base = LlamaForCausalLM.from_pretrained(default_model.base_checkpoint(), dtype=torch.float32).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-4)
