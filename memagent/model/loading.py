"""Building a MemoryLLM: from a released checkpoint, from any Llama-family base, or at random.

Every builder takes the model class to instantiate (as transformers' `from_pretrained` does
with `cls`), so this module never imports the model: `MemoryLLM.from_pretrained` and its
siblings call in here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

from memagent.model.config import DECODER_ADAPTER, WRITE_ADAPTER, MemoryLLMConfig
from memagent.model.long_term_memory import long_term_from_state
from memagent.model.lora import build_lora_linear
from memagent.model.memory_pool import MemoryPool
from memagent.model.rope import RotaryEmbedding

if TYPE_CHECKING:
    from memagent.model.memoryllm import MemoryLLM

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.(?P<adapter>[^.]+)\.weight$")
# M+ keeps its retriever's projections inside each attention module; we keep them in `retriever`.
_RETRIEVER_KEY = re.compile(
    r"^model\.layers\.(?P<layer>\d+)\.self_attn\.(?P<name>query_proj|key_proj|encoder_query_proj)\."
)
_LLAMA_FAMILY = ("llama", "mistral")
# Options of the first released layout (MemoryLLM-7B), whose read and write paths differ.
_FIRST_LAYOUT_OPTIONS = ("split_positional_embedding", "interpolate_position_ids", "use_negative_position_ids")
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not in the MemoryLLM format."""


def resolve_checkpoint(path_or_id: str | Path) -> Path:
    """A local folder as is; a hub id through huggingface_hub (which caches downloads)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") != 1:
        raise CheckpointError(f"{path_or_id}: no such checkpoint folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_id), allow_patterns=_SNAPSHOT_FILES))
    except Exception as err:  # the hub client raises many kinds; all mean "not available here"
        raise CheckpointError(
            f"could not fetch {path_or_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Offline, download the checkpoint elsewhere and pass its folder instead."
        ) from err


def read_safetensors(folder: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors`, or of every shard a `.index.json` names."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(folder / shard, device=str(device)))
    return state


def split_lora(state: dict[str, torch.Tensor]) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Take PEFT-style LoRA tensors out of `state` (renaming base_layer weights back in place).

    Returns {module path: {adapter name: (A, B)}}.
    """
    found: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key in [k for k in state if _LORA_KEY.match(k)]:
        m = _LORA_KEY.match(key)
        found.setdefault(m["module"], {}).setdefault(m["adapter"], {})[m["part"]] = state.pop(key)
    for key in [k for k in state if ".base_layer." in k]:
        state[key.replace(".base_layer.", ".")] = state.pop(key)
    return {module: {name: (ab["A"], ab["B"]) for name, ab in adapters.items()} for module, adapters in found.items()}


def split_retriever(state: dict[str, torch.Tensor]) -> None:
    """Rename M+'s retriever weights in `state` to `retriever.layers.{l}.*`, in place.

    The encoder retriever (`encoder_query_proj`) is used only in M+'s training, so it is dropped.
    """
    for key in [k for k in state if _RETRIEVER_KEY.match(k)]:
        m = _RETRIEVER_KEY.match(key)
        tensor = state.pop(key)
        if m["name"] != "encoder_query_proj":
            state[f"retriever.layers.{m['layer']}.{m['name']}.{key[m.end():]}"] = tensor


def attach_lora(
    model: MemoryLLM,
    lora: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]],
    stored: dict[str, torch.Tensor] | None = None,
) -> None:
    """Replace each adapted linear layer by a LoRALinear (read adapter merged, write adapter as delta).

    `stored` holds the checkpoint's weights before the cast to the model's dtype: the read
    adapter is merged into those in float32 and the sum rounded once.
    """
    c = model.config
    if lora and c.lora_config is None:
        raise CheckpointError("checkpoint holds LoRA weights but config.json has no lora_config")
    for module_path, adapters in lora.items():
        read = DECODER_ADAPTER if c.add_decoder_lora else WRITE_ADAPTER
        missing = {read, WRITE_ADAPTER} - adapters.keys()
        if missing:
            raise CheckpointError(f"{module_path}: LoRA adapter(s) {sorted(missing)} missing")
        linear: nn.Linear = model.get_submodule(module_path)
        weight = linear.weight.data
        if stored is not None and f"{module_path}.weight" in stored:
            weight = stored[f"{module_path}.weight"]
        model.set_submodule(
            module_path,
            build_lora_linear(
                weight, linear.bias, adapters, c.lora_config.scale, read, WRITE_ADAPTER,
                dtype=linear.weight.dtype, device=linear.weight.device,
            ),
        )


def build(
    model_class: type[MemoryLLM],
    config: MemoryLLMConfig,
    state: dict[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MemoryLLM:
    """A MemoryLLM from `state` (released key names, LoRA PEFT-style, `memory`/`initialized` optional)."""
    state = dict(state)
    lora = split_lora(state)
    split_retriever(state)
    memory = state.pop("memory", None)
    # M+ checkpoints have no `initialized` flag: their pool is always written.
    initialized = bool(state.pop("initialized", torch.tensor(int(config.long_term is not None))).item())
    initialized = initialized and memory is not None
    long_term_state = {k: state.pop(k) for k in [k for k in state if k.startswith("ltm")]}
    with torch.device("meta"):
        model = model_class(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise CheckpointError(f"weights do not match the config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary = RotaryEmbedding(config).to(device)
    attach_lora(model, lora, state)
    model.pool = model.new_pool()
    if memory is not None:
        if memory.shape != model.pool.memory.shape:
            raise CheckpointError(f"memory {tuple(memory.shape)} does not match the config's pool {tuple(model.memory.shape)}")
        memory = memory.to(device=device, dtype=dtype)
        long_term = model.pool.long_term
        model.pool = MemoryPool(memory, initialized, drop_per_layer=config.drop_memory_per_layer, long_term=long_term)
    if long_term_state:
        if config.long_term is None:
            first = sorted(long_term_state)[0]
            raise CheckpointError(f"checkpoint holds long-term memory ({first}, ...) but its config has none")
        try:
            model.pool.long_term = long_term_from_state(
                config.long_term, config.num_tokens, long_term_state, model.pool.memory
            )
        except ValueError as err:
            raise CheckpointError(f"long-term memory: {err}") from err
    return model.eval().requires_grad_(False)


def from_pretrained(
    model_class: type[MemoryLLM], path_or_id: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MemoryLLM:
    """Load a checkpoint in the released MemoryLLM or M+ format (a folder or a hub id)."""
    folder = resolve_checkpoint(path_or_id)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{folder}: no config.json")
    raw = json.loads(config_file.read_text())
    # MemoryLLM-8B says model_type "llama" with architectures ["MemoryLLM"]; the fixtures say "memoryllm".
    # M+ says "llama" with ["MPlus"] and its long-term fields as extra keys.
    architectures = raw.get("architectures") or []
    if "MPlus" in architectures and not raw.get("add_selector"):
        raise CheckpointError(f"{folder}: an M+ checkpoint without add_selector, which M+ requires")
    if raw.get("model_type") != "memoryllm" and not {"MemoryLLM", "MPlus"} & set(architectures):
        raise CheckpointError(
            f"{folder}: not a MemoryLLM checkpoint (model_type {raw.get('model_type')!r}, "
            f"architectures {raw.get('architectures')}); use MemoryLLM.from_base to turn a plain causal LM "
            "into a memory model"
        )
    first_layout = sorted(k for k in _FIRST_LAYOUT_OPTIONS if raw.get(k))
    if first_layout:
        raise CheckpointError(
            f"{folder}: this checkpoint uses the first MemoryLLM-7B layout ({', '.join(first_layout)}), "
            "which memagent does not implement; use MemoryLLM-8B or MemoryLLM-8B-chat"
        )
    return build(model_class, MemoryLLMConfig.from_dict(raw), read_safetensors(folder), device=device, dtype=dtype)


def from_random(model_class: type[MemoryLLM], config: MemoryLLMConfig, *, seed: int = 0, device="cpu", dtype=torch.float32) -> MemoryLLM:
    """A randomly initialised model (tests, benchmarks); the same seed gives the same weights."""
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in model_class(config).state_dict().items()}
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape, device=device, dtype=dtype)
        else:
            noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
            state[name] = (noise * config.initializer_range).to(dtype)
    return build(model_class, config, state, device=device, dtype=dtype)


def load_base(base: str | Path, *, device="cpu", dtype=torch.float32):
    """A Llama-family causal LM and its tokenizer: a folder, a hub id, or a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(base).expanduser()
    kwargs = {}
    if path.suffix == ".gguf":
        if not path.exists():
            raise CheckpointError(f"{path}: no such GGUF file")
        kwargs["gguf_file"], base = path.name, str(path.parent)
    tokenizer = AutoTokenizer.from_pretrained(str(base), **kwargs)
    hf_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, **kwargs)
    if hf_model.config.model_type not in _LLAMA_FAMILY:
        raise CheckpointError(f"{base}: model_type {hf_model.config.model_type!r} is not one of {_LLAMA_FAMILY}")
    return hf_model, tokenizer


def from_base(
    model_class: type[MemoryLLM],
    base: str | Path,
    *,
    num_tokens: int,
    num_blocks: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **options,
):
    """Turn a Llama-family causal LM into a MemoryLLM with fresh memory parts (for training).

    `options` set other MemoryLLMConfig fields (add_bos_embedding, drop_memory_per_layer, ...).
    Returns (model, tokenizer).
    """
    hf_model, tokenizer = load_base(base, dtype=torch.float32)
    model = from_hf_model(model_class, hf_model, num_tokens=num_tokens, num_blocks=num_blocks, seed=seed, **options)
    return model.to(device=device, dtype=dtype), tokenizer


def from_hf_model(model_class: type[MemoryLLM], hf_model, *, num_tokens: int, num_blocks: int, seed: int = 0, **options) -> MemoryLLM:
    """A MemoryLLM sharing `hf_model`'s weights, with freshly initialised memory parts."""
    raw = hf_model.config.to_dict() | dict(num_tokens=num_tokens, num_blocks=num_blocks, lora_config=None, **options)
    config = MemoryLLMConfig.from_dict(raw)
    state = dict(hf_model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    L, d = config.num_hidden_layers, config.hidden_size
    if config.add_bos_embedding:
        state["bos_embedding"] = torch.randn(L, 1, d, generator=generator) * config.initializer_range
    state["new_memory_positional_emb"] = torch.randn(1, 1, d, generator=generator) * config.initializer_range
    return build(model_class, config, state, dtype=next(iter(state.values())).dtype)
