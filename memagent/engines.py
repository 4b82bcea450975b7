"""Building engines: the embedded default, a released checkpoint, random weights of a named
shape, and the plain base model for comparisons. The one place that knows how each is made."""

from __future__ import annotations

from pathlib import Path

import torch

from memagent import default_model
from memagent.engine import Chunking, Engine
from memagent.model import quantized
from memagent.model.loading import resolve_checkpoint
from memagent.model.memoryllm import MemoryLLM
from memagent.model.shapes import shape_config

RANDOM_PREFIX = "random:"
SCHEMES = quantized.SCHEMES


def load(
    source: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
) -> Engine:
    """An engine on the embedded default (no source), a released checkpoint (folder or hub id),
    or `random:<shape>` (random weights of a named shape with the default's tokenizer; tests).

    `quantize="int8"` (CPU, float32) reads through int8 weights; writes, pools and their
    fingerprint stay the float model's (see `memagent.model.quantized`).
    """
    dtype = dtype or (torch.float32 if str(device) == "cpu" else torch.bfloat16)
    if quantize is not None and quantize not in SCHEMES:
        raise ValueError(f"unknown quantization {quantize!r}; known: {', '.join(SCHEMES)}")
    if source is None:
        return load_default_engine(device=device, dtype=dtype, quantize=quantize)
    if str(source).startswith(RANDOM_PREFIX):
        shape = str(source)[len(RANDOM_PREFIX) :]
        model = MemoryLLM.from_random(shape_config(shape), device=device, dtype=dtype)
        return Engine(_quantized(model, quantize), default_model.load_tokenizer(), name=str(source))
    from transformers import AutoTokenizer

    folder = resolve_checkpoint(source)
    model = MemoryLLM.from_pretrained(folder, device=device, dtype=dtype)
    return Engine(_quantized(model, quantize), AutoTokenizer.from_pretrained(str(folder)), name=str(source))


def _quantized(model: MemoryLLM, scheme: str | None) -> MemoryLLM:
    return quantized.quantize(model, scheme) if scheme is not None else model


def load_default_engine(
    adapter: str | Path = default_model.ADAPTER_DIR, *, device="cpu", dtype=torch.float32, quantize: str | None = None
) -> Engine:
    """The default model, writing text the way its adapter was trained: chunks of at most K
    tokens, short writes (a single tool-output line) taken as they are."""
    model, tokenizer = default_model.load_default(adapter, device=device, dtype=dtype)
    model = _quantized(model, quantize)
    chunking = Chunking(max_chunk_tokens=model.config.num_tokens, repeat_short=False)
    return Engine(model, tokenizer, name="memagent-default-smollm2-135m", chunking=chunking)


def load_base_engine(*, device="cpu", dtype=torch.float32) -> Engine:
    """SmolLM2-135M-Instruct without memory (see `default_model.load_base`)."""
    return Engine(default_model.load_base(device=device, dtype=dtype), default_model.load_tokenizer(), name="smollm2-135m-instruct")
