"""Hyper-parameters of a MemoryLLM, read from the released `config.json` or a Llama-family base."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DECODER_ADAPTER = "decoder_adapter"
WRITE_ADAPTER = "default"


@dataclass
class LoRAConfig:
    r: int
    lora_alpha: float
    target_modules: list[str]

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.r


@dataclass
class MemoryLLMConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    num_tokens: int  # K: memory tokens produced by one write, per layer
    num_blocks: int  # the pool holds N = K * num_blocks tokens per layer
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    add_bos_embedding: bool = True
    add_decoder_lora: bool = False
    drop_memory_per_layer: bool = False
    lora_config: LoRAConfig | None = None
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if isinstance(self.lora_config, dict):
            self.lora_config = LoRAConfig(
                r=self.lora_config["r"],
                lora_alpha=self.lora_config["lora_alpha"],
                target_modules=list(self.lora_config["target_modules"]),
            )

    @property
    def num_memory_tokens(self) -> int:
        return self.num_tokens * self.num_blocks

    @property
    def prefix_length(self) -> int:
        """Keys/values a read sees before the prompt: the bos embedding and the pool."""
        return self.num_memory_tokens + int(self.add_bos_embedding)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MemoryLLMConfig":
        raw = dict(raw)
        # transformers >= 5 keeps theta and scaling together in `rope_parameters`.
        rope = raw.pop("rope_parameters", None)
        if rope:
            raw.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", "default") != "default":
                raw.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in raw.items() if k in known}
        kwargs["extra"] = {k: v for k, v in raw.items() if k not in known}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "MemoryLLMConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["lora_config"] = dataclasses.asdict(self.lora_config) if self.lora_config else None
        out["model_type"] = "memoryllm"
        out["architectures"] = ["MemoryLLM"]
        out["num_memory_tokens"] = self.num_memory_tokens
        return out

    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)
