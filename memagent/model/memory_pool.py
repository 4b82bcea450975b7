"""The memory pool: N latent tokens per layer, and the rule for writing K new ones into it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from memagent.model.long_term_memory import LongTermMemory


@dataclass
class PrefixKV:
    """Keys/values of [bos_embedding, memory] for every layer, valid for one pool version."""

    version: int
    keys: list[torch.Tensor]  # per layer [1, kv_heads, P, head_dim]
    values: list[torch.Tensor]


@dataclass
class Dropped:
    """The tokens one write dropped from the pool."""

    index: torch.Tensor  # [L, n] their positions before the write, ascending per layer
    tokens: torch.Tensor  # [L, n, d]


def fill(new: torch.Tensor, size: int) -> torch.Tensor:
    """`size` entries along dim 1 made by repeating `new`, then its last size % n (a first write)."""
    n = new.shape[1]
    copies, rest = divmod(size, n)
    parts = [new] * copies + ([new[:, n - rest :]] if rest else [])
    return torch.cat(parts, dim=1).contiguous()


class MemoryPool:
    """A pool of memory tokens [L, N, d] plus what makes its updates reproducible.

    `version` changes on every write or reset, so caches derived from the pool (the prefix
    keys/values) know when they are stale. A write keeps the stale prefix and records in
    `prefix_origin` where each memory token sat in it, so the next read can update it
    instead of recomputing it. With M+ the pool also owns its `long_term` memory, which the
    model feeds with the tokens each write drops.
    """

    def __init__(
        self,
        memory: torch.Tensor,
        initialized: bool = False,
        *,
        seed: int = 0,
        drop_per_layer: bool = False,
        long_term: LongTermMemory | None = None,
    ):
        self.memory = memory
        self.initialized = initialized
        self.drop_per_layer = drop_per_layer
        self.step = 0
        self.version = 0
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.prefix_kv: PrefixKV | None = None
        # [L, N]: the memory index in `prefix_kv` of each memory token, -1 for tokens written
        # since; None while `prefix_kv` is current (or absent).
        self.prefix_origin: torch.Tensor | None = None
        self.long_term = long_term

    @property
    def num_layers(self) -> int:
        return self.memory.shape[0]

    @property
    def size(self) -> int:
        return self.memory.shape[1]

    def _changed(self) -> None:
        self.version += 1
        self.prefix_kv = None
        self.prefix_origin = None

    def _track_prefix(self, keep: torch.Tensor, n_new: int) -> None:
        """Follow the tokens of `prefix_kv` through a write that keeps `keep` [L, N - n_new]."""
        origin = self.prefix_origin
        if origin is None:
            origin = torch.arange(self.size, device=keep.device).expand(self.num_layers, -1)
        fresh = origin.new_full((self.num_layers, n_new), -1)
        self.prefix_origin = torch.cat([torch.gather(origin, 1, keep), fresh], dim=1)

    def write(self, new: torch.Tensor) -> Dropped | None:
        """Store `new` [L, n, d]: fill an empty pool, else drop n tokens at random and append.

        Returns what was dropped (None when the write filled an empty pool).
        """
        if new.shape[0] != self.num_layers or new.shape[2] != self.memory.shape[2]:
            raise ValueError(f"new memory {tuple(new.shape)} does not fit pool {tuple(self.memory.shape)}")
        new = new.to(self.memory.dtype)
        if not self.initialized:
            self.memory = fill(new, self.size)
            self.initialized = True
            self.step += 1
            self._changed()
            return None
        keep, drop = self._split(new.shape[1])
        dropped = Dropped(drop, self._gather(drop))
        self.memory = torch.cat([self._gather(keep), new], dim=1)
        self.step += 1
        self.version += 1
        if self.prefix_kv is not None:
            self._track_prefix(keep, new.shape[1])
        return dropped

    def _split(self, n_drop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [L, N - n_drop] to keep and [L, n_drop] to drop, chosen uniformly at random, ascending."""
        N = self.size
        layers = self.num_layers if self.drop_per_layer else 1
        perms = [torch.randperm(N, generator=self.generator) for _ in range(layers)]
        keep = torch.stack([p[: N - n_drop].sort().values for p in perms]).to(self.memory.device)
        drop = torch.stack([p[N - n_drop :].sort().values for p in perms]).to(self.memory.device)
        return keep.expand(self.num_layers, -1), drop.expand(self.num_layers, -1)

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(self.memory, 1, index[:, :, None].expand(-1, -1, self.memory.shape[2]))

    def reset(self) -> None:
        self.memory = torch.zeros_like(self.memory)
        self.initialized = False
        self.step = 0
        if self.long_term is not None:
            self.long_term.reset()
        self._changed()

    def clone(self) -> "MemoryPool":
        long_term = self.long_term.clone() if self.long_term is not None else None
        twin = MemoryPool(
            self.memory.clone(), self.initialized, drop_per_layer=self.drop_per_layer, long_term=long_term
        )
        twin.generator.set_state(self.generator.get_state())
        twin.step = self.step
        return twin

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None, *, pin: bool = False
    ) -> "MemoryPool":
        """Move the pool and its long-term memory to `device` and/or cast them to `dtype`, in
        place; their derived caches are dropped. With `pin`, a move of the pool to the host lands
        in page-locked memory (when a GPU makes it available), which copies to and from the GPU
        about twice as fast."""
        if pin and device is not None and torch.device(device).type == "cpu" and torch.cuda.is_available():
            host = torch.empty(self.memory.shape, dtype=dtype or self.memory.dtype, pin_memory=True)
            host.copy_(self.memory)
            self.memory = host
        else:
            # From pinned memory the copy can overlap; the stream orders it before any use.
            self.memory = self.memory.to(device=device, dtype=dtype, non_blocking=self.memory.is_pinned())
        if self.long_term is not None:
            self.long_term.to(device=device, dtype=dtype)
        self.prefix_kv = None
        self.prefix_origin = None
        return self

    @property
    def nbytes(self) -> int:
        cached = sum(t.nbytes for t in self.prefix_kv.keys + self.prefix_kv.values) if self.prefix_kv else 0
        long_term = self.long_term.nbytes if self.long_term is not None else 0
        return self.memory.nbytes + cached + long_term

    @property
    def off_device_nbytes(self) -> int:
        """Of `nbytes`, those in host memory while the pool is on another device: its long-term tokens."""
        if self.long_term is None or self.memory.device.type == "cpu":
            return 0
        return self.long_term.host_nbytes
