"""Keys and values of recalled whole writes, kept from one read to the next.

A read of whole writes (`memagent.model.write_memory`) places each recalled write's K tokens in
every layer's long-term region. Projecting them (layer norm, k_proj, v_proj: R writes x K
tokens x every layer) took a quarter of a 36-token question's prefill on the CPU, and most of
a shared prefill's, where each row recalls its own writes. A write's tokens never change, so
its keys and values are kept here per layer, least recently used out first, within a byte
budget. Keys are kept before RoPE: the slots a write takes vary from read to read.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

import torch

# The default budget: about 90 writes of the embedded default (2.9 MB each, every layer).
RECALLED_KV_BYTES = 256 * 2**20

_stores = itertools.count()


def store_id() -> int:
    """A number no other store content ever had: a store takes a new one whenever the tokens
    behind its write numbers change (a new store, a reset, a cast)."""
    return next(_stores)


Project = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RecalledKV:
    """Per (store, write number, layer): that write's keys (before RoPE) and values
    [kv_heads, K, head_dim], on the model's device and in its dtype."""

    def __init__(self, max_bytes: int = RECALLED_KV_BYTES):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def layer(self, store, layer: int, chosen: torch.Tensor, project: Project, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (before RoPE) and values [B, kv_heads, R' * K, head_dim] of layer `layer` for the
        writes `chosen` [B, R'] of `store` (indices among those it holds), in that order.
        `project(tokens [n, K, d])` gives the (keys, values) [n, kv_heads, K, head_dim] of the
        writes not kept yet."""
        numbers = (chosen.cpu() + store.first).tolist()  # write numbers outlive evictions; indices do not
        wanted = {(store.uid, number, layer) for row in numbers for number in row}
        missing = sorted(key for key in wanted if key not in self._entries)
        fresh = {}
        if missing:
            indices = torch.tensor([[number - store.first] for _, number, _ in missing])
            keys, values = project(store.gather(layer, indices, device))
            fresh = {key: (k, v) for key, k, v in zip(missing, keys, values)}
        rows = [[fresh.get(key) or self._entries[key] for key in ((store.uid, n, layer) for n in row)] for row in numbers]
        for key, kv in fresh.items():
            self._keep(key, kv)
        for key in wanted & self._entries.keys():
            self._entries.move_to_end(key)
        keys = torch.stack([torch.cat([k for k, _ in row], dim=1) for row in rows])
        values = torch.stack([torch.cat([v for _, v in row], dim=1) for row in rows])
        return keys, values

    def _keep(self, key: tuple[int, int, int], kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        # Own storage: a view would hold the whole batch's projection alive.
        kv = tuple(t.clone() for t in kv)
        size = sum(t.nbytes for t in kv)
        if size > self.max_bytes:
            return
        self._entries[key] = kv
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= sum(t.nbytes for t in old)
