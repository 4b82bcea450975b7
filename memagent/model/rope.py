"""Rotary position embeddings with the Llama family's scalings (default, linear, dynamic, llama3)."""

from __future__ import annotations

import math

import torch
from torch import nn

from memagent.model.config import MemoryLLMConfig


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = scaling["factor"]
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    original = scaling["original_max_position_embeddings"]
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Maps integer positions to (cos, sin) of shape [B, T, head_dim]."""

    def __init__(self, config: MemoryLLMConfig):
        super().__init__()
        self.dim = config.head_dim
        self.base = config.rope_theta
        self.max_positions = config.max_position_embeddings
        scaling = dict(config.rope_scaling or {})
        self.kind = scaling.get("rope_type", scaling.get("type", "default"))
        self.factor = float(scaling.get("factor", 1.0))
        if self.kind not in ("default", "linear", "dynamic", "llama3"):
            raise ValueError(f"unsupported rope scaling {self.kind!r}")
        inv_freq = self._inv_freq(self.base)
        if self.kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _apply(self, fn, recurse=True):
        # Frequencies follow the model's device but stay float32: in half precision the angles
        # of far positions would drift (transformers keeps them float32 too).
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(self.inv_freq.device)
        return self

    def _inv_freq(self, base: float, device: torch.device | None = None) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))

    def _dynamic_inv_freq(self, seq_len: int) -> torch.Tensor:
        # NTK-aware: grow the base once the sequence outgrows the trained context.
        if seq_len <= self.max_positions:
            return self.inv_freq
        base = self.base * (
            (self.factor * seq_len / self.max_positions) - (self.factor - 1)
        ) ** (self.dim / (self.dim - 2))
        # Built on the buffer's device: a CUDA-graphed step must not create host tensors.
        return self._inv_freq(base, self.inv_freq.device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype, seq_len: int | None = None):
        inv_freq = self.inv_freq
        if self.kind == "dynamic":
            inv_freq = self._dynamic_inv_freq(seq_len or int(positions.max()) + 1)
        pos = positions.float()
        if self.kind == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D]."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """`out` = apply_rope(x, cos, sin), written in place without apply_rope's temporaries."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
