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
from memagent.model.write_ranker import WriteRanker

RANDOM_PREFIX = "random:"
SCHEMES = quantized.SCHEMES
# Long-term tokens per layer that each memory of our own models keeps: 512 writes (chunks of at
# most K tokens) at the default's K = 64, 2.1 GiB in float32 (README).
MAX_LONG_TERM_TOKENS = 32768


def load(
    source: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    max_long_term_tokens: int | None = None,
    compile_decode: bool = False,
) -> Engine:
    """An engine on the embedded default (no source), a released checkpoint (folder or hub id),
    or `random:<shape>` (random weights of a named shape with the default's tokenizer; tests).

    `max_long_term_tokens` bounds an M+ model's long-term memory per layer and memory; 0: no
    bound; None: MAX_LONG_TERM_TOKENS for our own models, none for a released checkpoint
    (which then keeps M+'s rules exactly). `quantize="int8"` (CPU, float32) reads through int8
    weights; writes, pools and their fingerprint stay the float model's (`memagent.model.quantized`).
    `compile_decode`: one-row requests decode in steps compiled by inductor (then captured, on
    CUDA; `memagent.model.cuda_graph.Lane`): faster steps after a compile on first use, or at
    `Engine.prepare_decode`.
    """
    engine = _load(source, device=device, dtype=dtype, quantize=quantize, max_long_term_tokens=max_long_term_tokens)
    engine.model.compile_decode = compile_decode
    return engine


def _load(source, *, device, dtype, quantize, max_long_term_tokens) -> Engine:
    dtype = dtype or (torch.float32 if str(device) == "cpu" else torch.bfloat16)
    if quantize is not None and quantize not in SCHEMES:
        raise ValueError(f"unknown quantization {quantize!r}; known: {', '.join(SCHEMES)}")
    own_bound = MAX_LONG_TERM_TOKENS if max_long_term_tokens is None else max_long_term_tokens or None
    if source is None:
        return load_default_engine(device=device, dtype=dtype, max_long_term_tokens=own_bound, quantize=quantize)
    if str(source).startswith(RANDOM_PREFIX):
        shape = str(source)[len(RANDOM_PREFIX) :]
        model = _quantized(MemoryLLM.from_random(shape_config(shape), device=device, dtype=dtype), quantize)
        return Engine(model, default_model.load_tokenizer(), name=str(source), max_long_term_tokens=own_bound)
    from transformers import AutoTokenizer

    folder = resolve_checkpoint(source)
    model = MemoryLLM.from_pretrained(folder, device=device, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = _quantized(model, quantize)
    return Engine(model, tokenizer, name=str(source), max_long_term_tokens=max_long_term_tokens or None)


def _quantized(model: MemoryLLM, scheme: str | None) -> MemoryLLM:
    return quantized.quantize(model, scheme) if scheme is not None else model


def load_default_engine(
    adapter: str | Path = default_model.ADAPTER_DIR,
    *,
    device="cpu",
    dtype=torch.float32,
    max_long_term_tokens: int | None = MAX_LONG_TERM_TOKENS,
    quantize: str | None = None,
    long_term: bool = True,
) -> Engine:
    """The default model, writing text the way its adapter was trained: chunks of at most K
    tokens, short writes (a single tool-output line) taken as they are. `long_term=False`:
    without its long-term memory (comparisons)."""
    model, tokenizer = default_model.load_default(adapter, device=device, dtype=dtype, long_term=long_term)
    model = _quantized(model, quantize)
    chunking = Chunking(max_chunk_tokens=model.config.num_tokens, repeat_short=False)
    return Engine(
        model,
        tokenizer,
        name="memagent-default-smollm2-135m",
        chunking=chunking,
        max_long_term_tokens=max_long_term_tokens,
        ranker=WriteRanker.load(adapter),
    )


def load_base_engine(*, device="cpu", dtype=torch.float32) -> Engine:
    """SmolLM2-135M-Instruct without memory (see `default_model.load_base`)."""
    return Engine(default_model.load_base(device=device, dtype=dtype), default_model.load_tokenizer(), name="smollm2-135m-instruct")
