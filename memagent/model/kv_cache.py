"""Pre-allocated key/value cache: the memory prefix, shared by every row, plus per-row token slots.

With M+ the token slots start with a per-row long-term region: the M long-term tokens each row
retrieves for its prompt (so they differ between rows and cannot join the shared prefix). They
sit between bos and memory in RoPE positions, so the shared prefix's positions skip them.

Shapes never change during a generation, and the decode cursor (next slot, next RoPE position)
lives on the device and advances inside the step, so the step can be CUDA-graphed or compiled
without a host sync.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from memagent.model.memory_pool import PrefixKV

if TYPE_CHECKING:
    from memagent.model.long_term_memory import LongTermRead


class LayerCache:
    def __init__(self, prefix_keys, prefix_values, keys: torch.Tensor, values: torch.Tensor):
        self.prefix_keys = prefix_keys  # [1, kv_heads, P, head_dim], one copy for all rows; or None
        self.prefix_values = prefix_values
        self.keys = keys  # [B, kv_heads, M + S, head_dim]: the rows' long-term region, then own tokens
        self.values = values

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k/v [B, kv_heads, T, D] at token slots [T], or each row's own [B, T] (a lane)."""
        if slots.dim() == 1:
            self.keys.index_copy_(2, slots, k)
            self.values.index_copy_(2, slots, v)
            return
        rows = torch.arange(slots.shape[0], device=slots.device)[:, None]
        self.keys[rows, :, slots] = k.transpose(1, 2)  # indexed [B, T, kv_heads, D]
        self.values[rows, :, slots] = v.transpose(1, 2)


@dataclass(frozen=True)
class LayerRead:
    """One cache's share of a read at one layer: its rows of the batch, the token slots [T] its
    queries fill, their mask (`memagent.model.attention.token_mask`), and how many slots from
    the first may hold keys (None: all; a prefill's chunk knows that none after it does)."""

    cache: LayerCache
    rows: slice
    slots: torch.Tensor  # [T], or [B, T] for a lane's rows
    mask: torch.Tensor
    visible: int | None = None


class KVCache:
    """One LayerCache per layer, which token slots hold real (non-padding) tokens, and the cursor.

    Token slots are counted from the start of the per-row buffers: the long-term region is
    slots 0..M-1 (M = `long_term_slots`, 0 without M+), the prompt starts at slot M.
    `prefix_length` is the RoPE position of the prompt's first token: the shared prefix plus
    the long-term region, so it no longer equals the number of shared keys.

    With `own_prefix` the cache holds its own prefix buffers, filled by `load_prefix` (a cache
    reused across requests, e.g. by a captured graph); otherwise it refers to the pool's
    prefix keys/values without copying them.

    A `lane` is `batch_size` such caches of one row in one allocation, each row reading its own
    prefix at its own cursor (`row` gives row r as a cache of its own), so one step can decode
    every row of it: requests on different memories in one attention call per layer. A step
    over the lane advances only its `active` rows; the others write to a scratch slot past the
    last, which no query sees, so a row that is prefilling or idle is left as it was.
    """

    def __init__(
        self,
        prefix: PrefixKV | None,
        *,
        batch_size: int,
        max_tokens: int,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        own_prefix: bool = False,
        lane: bool = False,
        long_term_slots: int = 0,
        long_term: LongTermRead | None = None,
    ):
        self.long_term_slots = M = long_term_slots if prefix else 0
        self.prefix_length = prefix.keys[0].shape[2] + M if prefix else 0
        self.max_tokens = max_tokens
        self.layers: list[LayerCache] = []
        own_prefix = own_prefix or lane
        slots = M + max_tokens + lane  # a lane's scratch slot last
        for layer in range(num_layers):
            shape = (batch_size, kv_heads, slots, head_dim)
            prefix_kv = (None, None)
            if prefix:
                prefix_kv = (prefix.keys[layer], prefix.values[layer])
                if lane:  # zeros: rows never loaded still step (and are discarded), finite
                    prefix_kv = tuple(t.new_zeros((batch_size, *t.shape[1:])) for t in prefix_kv)
                elif own_prefix:
                    prefix_kv = tuple(torch.empty_like(t) for t in prefix_kv)
            # Zeros, not empty: masked-out slots still enter the attention product, and stray
            # NaNs in them would poison it (0 * NaN).
            keys = torch.zeros(shape, dtype=dtype, device=device)
            values = torch.zeros(shape, dtype=dtype, device=device)
            self.layers.append(LayerCache(*prefix_kv, keys, values))
        self.key_valid = torch.zeros(batch_size, slots, dtype=torch.bool, device=device)
        self.next_slot = torch.zeros(batch_size if lane else 1, dtype=torch.long, device=device)
        self.next_position = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.active = torch.zeros(batch_size, dtype=torch.long, device=device) if lane else None
        self.own_prefix = bool(prefix) and own_prefix
        self.loaded: weakref.ref | None = None  # the PrefixKV held in the own buffers
        if self.own_prefix and not lane:
            self.load_prefix(prefix)
        self.reset(long_term)

    def row(self, r: int) -> "KVCache":
        """Row r of a lane as a cache of one row (views of the lane's buffers, without its
        scratch slot)."""
        view = copy.copy(self)
        end = self.key_valid.shape[1] - 1
        view.layers = [
            LayerCache(
                layer.prefix_keys[r : r + 1],
                layer.prefix_values[r : r + 1],
                layer.keys[r : r + 1, :, :end],
                layer.values[r : r + 1, :, :end],
            )
            for layer in self.layers
        ]
        view.key_valid = self.key_valid[r : r + 1, :end]
        view.next_slot = self.next_slot[r : r + 1]
        view.next_position = self.next_position[r : r + 1]
        view.active, view.loaded = None, None
        return view

    def write_slots(self) -> torch.Tensor:
        """Where the next decode step's keys go: the cursor [1], or a lane's [B, 1] (its
        inactive rows' the scratch slot)."""
        if self.active is None:
            return self.next_slot
        scratch = self.key_valid.shape[1] - 1
        return torch.where(self.active.bool(), self.next_slot, scratch)[:, None]

    @property
    def batch_size(self) -> int:
        return self.key_valid.shape[0]

    def load_prefix(self, prefix: PrefixKV) -> None:
        """Copy `prefix` into this cache's own prefix buffers (skipped if they hold it already)."""
        if self.loaded is not None and self.loaded() is prefix:
            return
        for layer, k, v in zip(self.layers, prefix.keys, prefix.values):
            layer.prefix_keys.copy_(k)
            layer.prefix_values.copy_(v)
        self.loaded = weakref.ref(prefix)  # a write replaces the pool's PrefixKV, and this dies

    def reset(self, long_term: LongTermRead | None = None) -> None:
        """Forget the tokens of the previous request (their keys/values become unreachable).

        `long_term` is the next prefill's recall, which fills the long-term region layer by
        layer before that layer attends; without one (nothing stored yet) the region stays hidden.
        """
        self.key_valid.zero_()
        self.key_valid[:, : self.long_term_slots] = long_term is not None
        self.long_term = long_term

    def mark(self, slots: torch.Tensor, valid: torch.Tensor) -> None:
        """Record which of the token slots [T] (or [B, T]) now hold real tokens (valid: [B, T] bool)."""
        if slots.dim() == 1:
            self.key_valid.index_copy_(1, slots, valid)
        else:
            self.key_valid.scatter_(1, slots, valid)

    def attention_mask(self, slots: torch.Tensor, visible: int | None = None) -> torch.Tensor:
        """Boolean mask [B, 1, T, V] over the first V token slots (`visible`, default all M + S)
        for queries at slots [T]: causal, padding hidden. The memory prefix needs none: every
        query sees all of it; nor does the long-term region beyond its validity bits, since it
        comes before every token slot.

        A query always sees itself, so rows of left padding never attend to nothing.
        """
        valid = self.key_valid[:, :visible]
        key_index = torch.arange(valid.shape[1], device=slots.device)
        query_index = slots[..., None]  # [T, 1], or a lane's [B, T, 1]
        mask = valid[:, None, :] & (key_index <= query_index)
        mask = mask | (key_index == query_index)
        return mask[:, None]

    def advance(self) -> None:
        """Move the decode cursor one token on (in place, on the device); a lane's active rows'."""
        step = 1 if self.active is None else self.active
        self.next_slot += step
        self.next_position += step if self.active is None else step[:, None]

    @property
    def nbytes(self) -> int:
        tensors = [t for layer in self.layers for t in (layer.keys, layer.values)]
        if self.own_prefix:
            tensors += [t for layer in self.layers for t in (layer.prefix_keys, layer.prefix_values)]
        return sum(t.nbytes for t in tensors)
