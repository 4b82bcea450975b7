"""Token generation against a memory pool: greedy or sampled, batched, streamed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from memagent.model.cuda_graph import GraphedDecodeStep
from memagent.sampling import SamplingParams

if TYPE_CHECKING:
    from memagent.model.memory_pool import MemoryPool
    from memagent.model.memoryllm import MemoryLLM


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_id: int):
    """Move each row's real tokens to the right end, whatever side the caller padded."""
    if attention_mask is None:
        return input_ids, torch.ones_like(input_ids)
    mask = attention_mask.bool()
    if (mask.sum(1) == 0).any():
        raise ValueError("every prompt needs at least one token")
    # A stable sort of the mask moves padding (False) first and keeps the tokens' order.
    order = torch.sort(mask.int(), dim=1, stable=True).indices
    ids = torch.gather(input_ids, 1, order)
    aligned = torch.gather(mask, 1, order)
    return ids.masked_fill(~aligned, pad_id), aligned.long()


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row from logits [B, V]."""
    if not params.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the ones before it already cover top_p; the first always stays.
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= params.top_p
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


def stream(
    model: MemoryLLM,
    input_ids: torch.Tensor,
    params: SamplingParams,
    eos_token_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    pool: MemoryPool | None = None,
    lock: contextlib.AbstractContextManager = contextlib.nullcontext(),
    cuda_graph: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row [B] per step; rows that have finished repeat pad.

    Stops after max_new_tokens or when every row has produced one of `eos_token_ids`; stop
    strings are text, left to the caller. Closing the
    iterator early stops generation between two decode steps. `lock` is held around each
    model call (not while the caller consumes a token), so other work can interleave. On CUDA
    the decode step replays a captured graph unless `cuda_graph` is False.
    """
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, mask = left_align(input_ids.to(model.device), attention_mask, pad_id)
    mask = mask.to(model.device)
    B, T = ids.shape
    generator = None
    if params.do_sample:
        generator = torch.Generator()
        generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=model.device)
    with lock, torch.inference_mode():
        cache = model.new_cache(pool or model.pool, B, T + params.max_new_tokens)
        logits = model.lm_head(model.prefill(ids, mask, cache)[:, -1])
        decode = model.decode_step
        if cuda_graph and model.device.type == "cuda" and params.max_new_tokens > 1:
            decode = GraphedDecodeStep(model, cache, B, first_slot=T)
    positions = cache.prefix_length + mask.sum(1, keepdim=True)
    finished = torch.zeros(B, dtype=torch.bool, device=model.device)
    for step in range(params.max_new_tokens):
        token = next_token(logits, params, generator).masked_fill(finished, pad_id)
        yield token
        finished |= torch.isin(token, eos)
        if step + 1 == params.max_new_tokens or bool(finished.all()):
            return
        slot = torch.tensor([T + step], device=model.device)
        with lock, torch.inference_mode():
            logits = decode(token[:, None], positions + step, slot, cache)


def generate(
    model: MemoryLLM,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    pool: MemoryPool | None = None,
    cuda_graph: bool = True,
) -> torch.Tensor:
    """New token ids [B, n] (prompt not included); rows that ended early are padded."""
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_ids()
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    params = SamplingParams(max_new_tokens, do_sample, temperature, top_k, top_p, seed)
    tokens = stream(model, input_ids, params, eos, attention_mask, pool, cuda_graph=cuda_graph)
    return torch.stack(list(tokens), dim=1)
