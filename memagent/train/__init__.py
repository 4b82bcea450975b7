"""Training the embedded default's memory mechanism (`memagent train`)."""

from __future__ import annotations

from pathlib import Path

import torch

from memagent import default_model
from memagent.model.memoryllm import MemoryLLM
from memagent.train.adapter import AdapterShape, make_trainable, start_from


def default_trainable(
    num_tokens: int,
    num_blocks: int,
    shape: AdapterShape,
    *,
    seed: int = 0,
    device="cpu",
    start: str | Path | None = None,
) -> MemoryLLM:
    """SmolLM2-135M-Instruct as a MemoryLLM with fresh (small random) memory parts and a fresh
    LoRA adapter, both drawn from `seed`, or those of the adapter exported to `start`."""
    config = default_model.base_config(num_tokens=num_tokens, num_blocks=num_blocks, lora_config=None)
    generator = torch.Generator().manual_seed(seed)
    L, d = config.num_hidden_layers, config.hidden_size
    memory_parts = {
        "bos_embedding": torch.randn(L, 1, d, generator=generator) * config.initializer_range,
        "new_memory_positional_emb": torch.randn(1, 1, d, generator=generator) * config.initializer_range,
    }
    model = MemoryLLM.from_state(config, default_model.base_state() | memory_parts, device=device, dtype=torch.float32)
    model = make_trainable(model, shape, seed)
    return model if start is None else start_from(model, start)
