"""Attention over a shared memory prefix plus per-row token slots, merged by log-sum-exp.

A read attends two key ranges: the memory prefix (bos + N memory tokens, identical for every
row that reads one memory, and visible to every query) and the row's own prompt and generated
tokens (causal, padding hidden). The prefix is stored once, not once per row: its scores come
from one product of the queries of all rows that read it (of every request on that memory
version) with the shared keys, and it needs no mask. The token range is short and carries the
only mask. Each range gives a partial softmax; their log-sum-exps weigh them into the exact
result.

Queries are grouped per kv head without repeating keys: the query heads that share a kv head
are folded into the time axis, so each kv head serves [rep * T] queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_fused_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

# Queries (rows x tokens) per prefill chunk: the memory prefix's scores for one chunk are
# [kv_heads, rows * query heads per kv head, P] floats (about 0.4 GiB per layer at 8B).
PREFILL_QUERY_ROWS = 256


def token_mask(mask: torch.Tensor, rep: int, dtype: torch.dtype) -> torch.Tensor:
    """`mask` [B, 1, T, S] bool (True where a query sees a token slot) as `attend` takes it:
    for [rep * T] folded queries, additive (0 or -inf, in `dtype`) on the CPU, whose fused
    kernel takes that form, boolean elsewhere. Made once per forward pass, used by every layer."""
    B, _, T, S = mask.shape
    folded = mask[:, :, None].expand(B, 1, rep, T, S).reshape(B, 1, rep * T, S)
    if mask.device.type != "cpu":
        return folded
    return torch.zeros(folded.shape, dtype=dtype).masked_fill_(~folded, float("-inf"))


def attend(
    queries: Sequence[torch.Tensor],
    prefix_keys: torch.Tensor | None,
    prefix_values: torch.Tensor | None,
    token_ranges: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> list[torch.Tensor]:
    """Attention outputs [B_i, H, T_i, D] for the queries [B_i, H, T_i, D] of caches that read one
    memory prefix (keys/values [1, G, P, D], or None): each cache's queries attend its own token
    slots (keys/values [B_i, G, S_i, D], mask from `token_mask`), and all of them attend the
    prefix in one product, so its keys/values are read once for every request on that memory.

    A lane's rows each read their own prefix (keys/values [B, G, P, D]; one cache): one batched
    product, row b's queries with row b's prefix."""
    D = queries[0].shape[-1]
    G = token_ranges[0][0].shape[1]
    scale = D**-0.5
    grouped = [q.reshape(q.shape[0], G, -1, D) for q in queries]  # [B, G, rep * T, D]
    # A query always sees itself: each token range's softmax is finite.
    parts = [_token_attention(q, *token_range, scale) for q, token_range in zip(grouped, token_ranges)]
    if prefix_keys is None:
        return [out.reshape(q.shape) for (out, _), q in zip(parts, queries)]
    if prefix_keys.shape[0] > 1:  # a lane
        (q,), ((out, lse),) = grouped, parts
        own_out, own_lse = _prefix_attention(q, prefix_keys, prefix_values, scale)
        return [_merge(own_out, own_lse[..., None], out, lse).reshape(queries[0].shape)]
    folded = [q.transpose(0, 1).reshape(G, -1, D) for q in grouped]  # all rows' queries per kv head
    stacked = torch.cat(folded, 1) if len(folded) > 1 else folded[0]
    prefix_out, prefix_lse = _prefix_attention(stacked[None], prefix_keys, prefix_values, scale)
    outputs, start = [], 0
    for q, (out, lse) in zip(queries, parts):
        B, H, T, _ = q.shape
        M = H // G * T
        rows = slice(start, start + B * M)
        start = rows.stop
        own_out = prefix_out[0, :, rows].reshape(G, B, M, D).transpose(0, 1)
        own_lse = prefix_lse[0, :, rows].reshape(G, B, M, 1).transpose(0, 1)
        outputs.append(_merge(own_out, own_lse, out, lse).reshape(B, H, T, D))
    return outputs


def _merge(prefix_out: torch.Tensor, prefix_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """The attention over both key ranges from each range's output and log-sum-exp."""
    # The token range's share of the whole softmax: exp(lse) / (exp(lse) + exp(prefix_lse)).
    share = torch.sigmoid(lse - prefix_lse).to(out.dtype)
    return torch.lerp(prefix_out, out, share)


def _token_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float):
    """Masked softmax attention over the token slots: (output [B, G, M, D], lse [B, G, M, 1] float)."""
    if q.device.type == "cpu":
        out, lse = _fused_cpu(q, keys, values, attn_mask=mask, scale=scale)
        return out, lse.float()[..., None]
    scores = (q @ keys.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = scores.logsumexp(-1, keepdim=True)
    return (scores - lse).exp().to(values.dtype) @ values, lse


def _prefix_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float):
    """Softmax attention over the whole prefix, no mask: (output [1, G, M, D], lse [1, G, M] float).

    A fused kernel where there is one: on CUDA in half precision flash attention, which splits
    the long key range over the GPU's multiprocessors (a handful of decode queries would
    otherwise keep most idle, and a batched matrix product of this shape gets a slow kernel);
    on the CPU its flash kernel, which reads the keys once instead of three passes over the
    scores (2-3x faster at decode shapes). Elsewhere, two products.
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, keys, values, scale=scale)[:2]
        return out, lse[..., : q.shape[2]].float()
    if q.device.type == "cpu":
        out, lse = _fused_cpu(q, keys, values, scale=scale)
        return out, lse.float()
    scores = (q @ keys.transpose(-1, -2)).float() * scale
    lse = scores.logsumexp(-1, keepdim=True)
    out = (scores - lse).exp().to(values.dtype) @ values
    return out, lse.squeeze(-1)
