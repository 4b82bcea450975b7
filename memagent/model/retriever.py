"""M+'s retriever: per layer, projections that score long-term memory tokens against a prompt.

Both projections read hidden states after the layer's `input_layernorm`. A memory token's key
is computed once, when the token leaves the pool; a read scores every candidate j by
mean_t sigmoid(q_t . key_j) over the prompt's tokens (no 1/sqrt(s) scaling, as in M+).
"""

from __future__ import annotations

import torch
from torch import nn

from memagent.model.config import MemoryLLMConfig

_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def _projection(d: int, s: int, layers: int, activation: str) -> nn.Module:
    """Linear(d, s), or Linear(d, 2s) -> activation -> Linear(2s, s); no bias (the released names)."""
    if layers == 1:
        return nn.Linear(d, s, bias=False)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"selector activation {activation!r} is not one of {sorted(_ACTIVATIONS)}")
    return nn.Sequential(nn.Linear(d, 2 * s, bias=False), _ACTIVATIONS[activation](), nn.Linear(2 * s, s, bias=False))


class RetrieverLayer(nn.Module):
    def __init__(self, d: int, s: int, layers: int, activation: str):
        super().__init__()
        self.query_proj = _projection(d, s, layers, activation)
        self.key_proj = _projection(d, s, layers, activation)


class Retriever(nn.Module):
    def __init__(self, config: MemoryLLMConfig):
        super().__init__()
        lt = config.long_term
        self.layers = nn.ModuleList(
            RetrieverLayer(config.hidden_size, lt.selector_hidden_dim, lt.num_selector_layers, lt.selector_activation)
            for _ in range(config.num_hidden_layers)
        )

    def keys(self, layer: int, normed: torch.Tensor) -> torch.Tensor:
        """Keys [..., s] of memory tokens `normed` [..., d] (after the layer's input_layernorm)."""
        return self.layers[layer].key_proj(normed)

    def scores(self, layer: int, normed: torch.Tensor, valid: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Scores [B, n] of `keys` [n, s] for prompts `normed` [B, T, d], averaged over `valid` [B, T] tokens."""
        queries = self.layers[layer].query_proj(normed)  # [B, T, s]
        similarity = torch.sigmoid(queries @ keys.to(queries.dtype).T)  # [B, T, n]
        weights = valid.to(similarity.dtype)
        return (similarity * weights[:, :, None]).sum(1) / weights.sum(1, keepdim=True)
