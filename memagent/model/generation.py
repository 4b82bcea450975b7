"""Token generation against a memory pool: greedy or sampled, batched, streamed."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from memagent.model.cuda_graph import DecodeGraphs
from memagent.sampling import SamplingParams

GRAPH_MIN_NEW_TOKENS = 8  # shorter answers decode eagerly: a capture or prefix copy would not pay off
EOS_CHECK_EVERY = 8

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
    """One token id per row from logits [B, V], on the logits' device (no host sync)."""
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
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def eos_check_interval(device: torch.device) -> int:
    """Steps between checks that every row has ended: each check waits for the device."""
    return 1 if device.type == "cpu" else EOS_CHECK_EVERY


def stream(
    model: MemoryLLM,
    input_ids: torch.Tensor,
    params: SamplingParams,
    eos_token_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    pool: MemoryPool | None = None,
    lock: contextlib.AbstractContextManager = contextlib.nullcontext(),
    cuda_graph: bool = True,
    graphs: DecodeGraphs | None = None,
    eos_check_every: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row [B] per step, on the model's device; rows that have
    finished repeat pad.

    Stops after max_new_tokens or once every row has produced one of `eos_token_ids`, which is
    checked every `eos_check_every` steps (each check waits for the device; default: every step
    on the CPU, every EOS_CHECK_EVERY on an accelerator), so up to that many all-pad steps may
    follow the last EOS. Stop strings are text, left to the caller. Closing the iterator early
    stops generation between two decode steps. `lock` is held around each model call (not
    while the caller consumes a token), so other work can interleave.

    Decode steps are queued before the token is yielded, so the device computes the next step
    while the caller reads this one. On CUDA (or with `graphs` given) answers of at least
    GRAPH_MIN_NEW_TOKENS tokens borrow a static step from `graphs` (default: the model's
    shared CUDA graphs) unless `cuda_graph` is False.
    """
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, mask = left_align(input_ids.to(model.device), attention_mask, pad_id)
    mask = mask.to(model.device)
    B, T = ids.shape
    pool = pool or model.pool
    generator = None
    if params.do_sample:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=model.device)
    check_every = eos_check_every or eos_check_interval(model.device)
    if graphs is None and cuda_graph and model.device.type == "cuda":
        graphs = DecodeGraphs.of(model)
    with contextlib.ExitStack() as borrowed:
        with lock, torch.inference_mode():
            step = None
            if graphs is not None and cuda_graph and params.max_new_tokens >= GRAPH_MIN_NEW_TOKENS:
                # Under the caller's lock: a capture must not interleave with other model calls.
                memory = pool if pool.initialized else None
                step = borrowed.enter_context(graphs.borrow(memory, B, T + params.max_new_tokens))
            if step is None:
                cache = model.new_cache(pool, B, T + params.max_new_tokens)
                step = functools.partial(model.decode_step, cache=cache)
            else:
                cache = step.cache
            logits = model.lm_head(model.prefill(ids, mask, cache)[:, -1])
        finished = torch.zeros(B, dtype=torch.bool, device=model.device)
        for index in range(params.max_new_tokens):
            last = index + 1 == params.max_new_tokens
            with lock, torch.inference_mode():
                token = next_token(logits, params, generator).masked_fill(finished, pad_id)
                finished |= torch.isin(token, eos)
                if not last:
                    logits = step(token[:, None])
            yield token
            if last or ((index + 1) % check_every == 0 and bool(finished.all())):
                return


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
    tokens = torch.stack(list(stream(model, input_ids, params, eos, attention_mask, pool, cuda_graph=cuda_graph)), dim=1)
    # Drop the all-pad steps a sparse end-of-sequence check may add after every row ended.
    ended = torch.isin(tokens, torch.tensor(eos, dtype=torch.long, device=tokens.device)).cummax(1).values.all(0)
    return tokens[:, : int(ended.int().argmax()) + 1] if bool(ended.any()) else tokens
