"""Token generation against a memory pool: greedy or sampled, batched, streamed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from memagent.model.decoding import decode
from memagent.sampling import SamplingParams

if TYPE_CHECKING:
    from memagent.model.memory_pool import MemoryPool
    from memagent.model.memoryllm import MemoryLLM


def stream(
    model: MemoryLLM,
    input_ids: torch.Tensor,
    params: SamplingParams,
    eos_token_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    pool: MemoryPool | None = None,
    **options,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row [B] per step, on the model's device; rows that have
    finished repeat pad. `options` are `memagent.model.decoding.decode`'s (batch, lock) and
    `Decoding`'s (cuda_graph, graphs, eos_check_every, logit_bias, answer_spans).

    Stops after max_new_tokens or once every row has produced one of `eos_token_ids` (see
    `Decoding`). Stop strings are text, left to the caller. Closing the iterator early stops
    generation between two decode steps. `lock` is held around each model call (not while the
    caller consumes a token), so other work can interleave.
    """
    with contextlib.closing(decode(model, input_ids, params, eos_token_ids, attention_mask, pool, **options)) as steps:
        for tokens in steps:
            if tokens is not None:
                yield tokens


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
