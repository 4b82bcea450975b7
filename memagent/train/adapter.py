"""The trainable memory adapter: LoRA (through peft) plus the memory parts, and its export.

One adapter named "default" serves both writes and reads (add_decoder_lora false), so peft's
parameter names are already the released ones (`<module>.lora_A.default.weight`) and
`MemoryLLM.from_state` merges an exported adapter with no conversion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from memagent.model.config import WRITE_ADAPTER, LoRAConfig, MemoryLLMConfig
from memagent.default_model import ADAPTER_WEIGHTS
from memagent.model.memoryllm import MemoryLLM

MEMORY_PARTS = ("bos_embedding", "new_memory_positional_emb")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class AdapterShape:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_LINEAR

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.targets))


def make_trainable(model: MemoryLLM, shape: AdapterShape, seed: int = 0) -> MemoryLLM:
    """Add a fresh LoRA adapter to `model` (in place), drawn from `seed`; only it and the memory
    parts train."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    peft_config = LoraConfig(r=shape.rank, lora_alpha=shape.alpha, target_modules=list(shape.targets), lora_dropout=0.0)
    # peft draws each lora_A from torch's global generator: seeded there, two runs of one seed
    # train alike; forked, the caller's generator is left as it was.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, model, adapter_name=WRITE_ADAPTER)
    for name in MEMORY_PARTS:
        getattr(model, name).requires_grad_(True)
    model.config.lora_config = shape.lora_config()
    return model


def start_from(model: MemoryLLM, folder: str | Path) -> MemoryLLM:
    """Set `model`'s trainable parts (from `make_trainable`) to those of the adapter exported to
    `folder`, to train on from there. Its shape must be the model's; a retriever it carries is
    not taken (the retriever phase trains one for the adapter it ends with)."""
    folder = Path(folder)
    theirs, ours = MemoryLLMConfig.from_json(folder / "config.json"), model.config
    for name in ("num_tokens", "num_memory_tokens", "lora_config"):
        if getattr(theirs, name) != getattr(ours, name):
            raise ValueError(
                f"the adapter in {folder} has {name} {getattr(theirs, name)}, this run trains {getattr(ours, name)}"
            )
    state = load_file(folder / ADAPTER_WEIGHTS)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    missing = [name for name in trainable if name not in state]
    if missing:
        raise ValueError(f"the adapter in {folder} lacks {len(missing)} trained tensors, e.g. {missing[0]}")
    model.load_state_dict({name: state[name] for name in trainable}, strict=False)
    return model


def trainable_state(model: MemoryLLM) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def export_adapter(model: MemoryLLM, folder: str | Path, lora_dtype: torch.dtype = torch.float16) -> Path:
    """Write config.json and adapter.safetensors, the form `memagent.default_model.load_default` reads.

    LoRA factors are stored in `lora_dtype` (half precision keeps the adapter a few MB); the
    memory parts stay in float32.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        name: t.to(torch.float32 if name in MEMORY_PARTS else lora_dtype).contiguous()
        for name, t in trainable_state(model).items()
    }
    save_file(state, folder / ADAPTER_WEIGHTS)
    config = model.config.to_dict()
    (folder / "config.json").write_text(json.dumps(config, indent=1, default=str) + "\n")
    return folder


@torch.no_grad()
def export_difference(model: MemoryLLM, folder: str | Path, base_state: dict[str, torch.Tensor], ids: torch.Tensor) -> float:
    """Largest logit difference between `model` and the adapter exported to `folder`, rebuilt
    on `base_state` the way `load_default` does it, after both write and then read `ids` [1, T]."""
    folder = Path(folder)
    config = MemoryLLMConfig.from_json(folder / "config.json")
    reloaded = MemoryLLM.from_state(config, base_state | load_file(folder / ADAPTER_WEIGHTS), device=model.device)
    logits = []
    for m in (model, reloaded):
        pool = m.new_pool(seed=0)
        pool.write(m.new_memory(ids, None))
        pool.write(m.new_memory(ids, pool.memory))
        logits.append(m(ids, pool=pool).logits)
    return (logits[0] - logits[1]).abs().max().item()
