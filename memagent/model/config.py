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
class LongTermConfig:
    """M+'s long-term memory, under the released config.json's names (stored there as flat keys).

    Tokens dropped from the pool wait in a pending list, move to the long-term store every
    `update_ltm_frequency` writes, and every read retrieves M = num_ltm_blocks * K of them per
    layer into its prefix, chosen by a retriever with keys of `selector_hidden_dim`.

    `ltm_recall` "writes" (not in M+) keeps whole writes instead, and a read sees the
    num_ltm_blocks writes whose ids best match its prompt in place of the pool
    (`memagent.model.write_memory`); the selector and merge fields then go unused.
    """

    num_ltm_blocks: int
    selector_hidden_dim: int
    num_selector_layers: int = 1  # 1: Linear(d, s); 2: Linear(d, 2s) -> activation -> Linear(2s, s)
    selector_activation: str = "silu"  # the released config's hidden_act
    ltm_initial_size: int = 0  # rows per layer in a released checkpoint
    update_ltm_frequency: int = 1  # F: merge the pending tokens every F-th write
    decay_frequency: float = 1.0  # delta: recall frequencies lose this much per merge
    initial_rf_when_moving_stm_to_ltm: float = 1.0  # r0: a merged token's recall frequency
    update_ltm_mode: str = "immediate"
    ltm_recall: str = "tokens"  # "tokens": M+; "writes": whole writes

    def __post_init__(self) -> None:
        if self.ltm_recall not in ("tokens", "writes"):
            raise ValueError(f"ltm_recall must be 'tokens' or 'writes', got {self.ltm_recall!r}")
        if self.num_selector_layers not in (1, 2):
            raise ValueError(f"num_selector_layers must be 1 or 2, got {self.num_selector_layers}")
        # The reference raises on any other mode at the first write; refusing at load keeps
        # a half-written pool from ever existing.
        if self.update_ltm_mode != "immediate":
            raise ValueError(f"update_ltm_mode {self.update_ltm_mode!r} is not supported (only 'immediate', as in M+)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LongTermConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        kwargs.setdefault("selector_activation", raw.get("hidden_act", "silu"))
        return cls(**kwargs)


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
    long_term: LongTermConfig | None = None  # M+ (off for MemoryLLM)
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
        if isinstance(self.long_term, dict):
            self.long_term = LongTermConfig.from_dict(self.long_term)
        if self.long_term is not None:
            if not 0 < self.long_term.num_ltm_blocks < self.num_blocks - 1:
                raise ValueError(
                    f"num_ltm_blocks ({self.long_term.num_ltm_blocks}) must leave the pool at least two of "
                    f"num_blocks ({self.num_blocks})"
                )
            self.drop_memory_per_layer = True  # M+ always drops per layer; its config's flag is unused

    @property
    def num_memory_tokens(self) -> int:
        """N: the pool's tokens per layer (M+ counts its long-term slots in num_blocks too)."""
        return self.num_tokens * (self.num_blocks - (self.long_term.num_ltm_blocks if self.long_term else 0))

    @property
    def long_term_slots(self) -> int:
        """M: long-term tokens a read places in each layer's prefix (0 without long-term memory)."""
        return self.num_tokens * self.long_term.num_ltm_blocks if self.long_term else 0

    @property
    def prefix_length(self) -> int:
        """Keys/values a read sees before the prompt: the bos embedding, long-term slots and the pool."""
        return self.num_memory_tokens + self.long_term_slots + int(self.add_bos_embedding)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MemoryLLMConfig":
        raw = dict(raw)
        # transformers >= 5 keeps theta and scaling together in `rope_parameters`.
        rope = raw.pop("rope_parameters", None)
        if rope:
            raw.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", "default") != "default":
                raw.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "long_term"}
        kwargs = {k: v for k, v in raw.items() if k in known}
        # M+ stores its long-term fields as flat extra keys of a Llama config.
        if raw.get("add_selector"):
            kwargs["long_term"] = LongTermConfig.from_dict(raw)
            known |= {f.name for f in dataclasses.fields(LongTermConfig)} | {"add_selector"}
        kwargs["extra"] = {k: v for k, v in raw.items() if k not in known}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "MemoryLLMConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "long_term")}
        out["lora_config"] = dataclasses.asdict(self.lora_config) if self.lora_config else None
        if self.long_term:
            out |= dataclasses.asdict(self.long_term) | {"add_selector": True}
        out["model_type"] = "memoryllm"
        out["architectures"] = ["MemoryLLM"]
        out["num_memory_tokens"] = self.num_memory_tokens
        return out

    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)
