"""Pre-allocated key/value cache whose first P slots hold the memory prefix.

Shapes never change during a generation, so the decode step can be CUDA-graphed or compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from memagent.model.memory_pool import PrefixKV

if TYPE_CHECKING:
    from memagent.model.long_term_memory import LongTermRead


class LayerCache:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, prefix_length: int):
        self.keys = keys  # [B, kv_heads, P + S, head_dim]
        self.values = values
        self.prefix_length = prefix_length

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B, kv_heads, T, D] at token slots [T] (counted after the prefix)."""
        index = slots + self.prefix_length
        self.keys.index_copy_(2, index, k)
        self.values.index_copy_(2, index, v)
        return self.keys, self.values


class KVCache:
    """One LayerCache per layer, plus which slots hold real (non-padding) tokens."""

    def __init__(
        self,
        prefix: PrefixKV | None,
        *,
        batch_size: int,
        max_tokens: int,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        P = prefix.keys[0].shape[2] if prefix else 0
        self.prefix_length = P
        self.max_tokens = max_tokens
        self.layers: list[LayerCache] = []
        for layer in range(num_layers):
            shape = (batch_size, kv_heads, P + max_tokens, head_dim)
            # Zeros, not empty: masked-out slots still enter the attention product, and stray
            # NaNs in them would poison it (0 * NaN).
            keys = torch.zeros(shape, dtype=dtype, device=device)
            values = torch.zeros(shape, dtype=dtype, device=device)
            if prefix:
                keys[:, :, :P] = prefix.keys[layer]
                values[:, :, :P] = prefix.values[layer]
            self.layers.append(LayerCache(keys, values, P))
        # Memory prefix slots are always visible; token slots become visible once filled.
        self.key_valid = torch.zeros(batch_size, P + max_tokens, dtype=torch.bool, device=device)
        self.key_valid[:, :P] = True
        # M+: the prefix's long-term slots, which the prefill fills per layer from the prompt.
        self.long_term: LongTermRead | None = None

    def mark(self, slots: torch.Tensor, valid: torch.Tensor) -> None:
        """Record which of the token slots [T] now hold real tokens (valid: [B, T] bool)."""
        self.key_valid.index_copy_(1, slots + self.prefix_length, valid)

    def attention_mask(self, slots: torch.Tensor) -> torch.Tensor:
        """Boolean mask [B, 1, T, P+S] for queries at token slots [T]: causal, padding hidden.

        A query always sees itself, so rows of left padding never attend to nothing.
        """
        key_index = torch.arange(self.key_valid.shape[1], device=slots.device)
        query_index = (slots + self.prefix_length)[:, None]
        causal = key_index[None, :] <= query_index
        mask = self.key_valid[:, None, :] & causal[None]
        mask = mask | (key_index[None, :] == query_index)[None]
        return mask[:, None]
