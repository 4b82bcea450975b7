"""Attention over a shared memory prefix plus per-row token slots, merged by log-sum-exp.

A read attends two key ranges: the memory prefix (bos + N memory tokens, identical for every
row that reads one memory, and visible to every query) and the row's own prompt and generated
tokens (causal, padding hidden). The prefix is stored once, not once per row: its scores come
from one product of all rows' queries with the shared keys, and it needs no mask. The token
range is short and carries the only mask. Each range gives a partial softmax; their
log-sum-exps weigh them into the exact result.
"""

from __future__ import annotations

import torch


def attend(
    q: torch.Tensor,
    prefix_keys: torch.Tensor | None,
    prefix_values: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Attention output [B, H, T, D].

    q: [B, H, T, D]; prefix_keys/values: [1, G, P, D] shared by all rows (or None);
    keys/values: [B, G, S, D]; mask: [B, 1, T, S] bool, True where a query sees a token slot.
    """
    B, H, T, D = q.shape
    G, S = keys.shape[1], keys.shape[2]
    rep = H // G
    scale = D**-0.5
    # Grouped-query attention without repeating keys: each kv head serves [rep * T] queries.
    q = q.reshape(B, G, rep * T, D)
    scores = (q @ keys.transpose(-1, -2)).float() * scale
    scores = scores.view(B, G, rep, T, S).masked_fill(~mask[:, :, None], float("-inf")).view(B, G, rep * T, S)
    lse = scores.logsumexp(-1, keepdim=True)  # a query always sees itself: finite
    if prefix_keys is None:
        out = (scores - lse).exp().to(values.dtype) @ values
        return out.reshape(B, H, T, D)
    # All rows' queries against the one shared prefix: [1, G, B * rep * T, D].
    folded = q.transpose(0, 1).reshape(1, G, B * rep * T, D)
    prefix_out, prefix_lse = _prefix_attention(folded, prefix_keys, prefix_values, scale)
    prefix_out = prefix_out.view(G, B, rep * T, D).transpose(0, 1)
    prefix_lse = prefix_lse.view(G, B, rep * T, 1).transpose(0, 1)
    total = torch.logaddexp(lse, prefix_lse)  # [B, G, rep * T, 1]
    out = (scores - total).exp().to(values.dtype) @ values
    out = out + (prefix_lse - total).exp().to(prefix_out.dtype) * prefix_out
    return out.reshape(B, H, T, D)


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
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, keys, values, scale=scale)
        return out, lse.float()
    scores = (q @ keys.transpose(-1, -2)).float() * scale
    lse = scores.logsumexp(-1, keepdim=True)
    out = (scores - lse).exp().to(values.dtype) @ values
    return out, lse.squeeze(-1)
