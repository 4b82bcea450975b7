"""The memory pool: N latent tokens per layer, and the rule for writing K new ones into it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefixKV:
    """Keys/values of [bos_embedding, memory] for every layer, valid for one pool version."""

    version: int
    keys: list[torch.Tensor]  # per layer [1, kv_heads, P, head_dim]
    values: list[torch.Tensor]


class MemoryPool:
    """A pool of memory tokens [L, N, d] plus what makes its updates reproducible.

    `version` changes on every write or reset, so caches derived from the pool (the prefix
    keys/values) know when they are stale.
    """

    def __init__(
        self,
        memory: torch.Tensor,
        initialized: bool = False,
        *,
        seed: int = 0,
        drop_per_layer: bool = False,
    ):
        self.memory = memory
        self.initialized = initialized
        self.drop_per_layer = drop_per_layer
        self.step = 0
        self.version = 0
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.prefix_kv: PrefixKV | None = None

    @property
    def num_layers(self) -> int:
        return self.memory.shape[0]

    @property
    def size(self) -> int:
        return self.memory.shape[1]

    def _changed(self) -> None:
        self.version += 1
        self.prefix_kv = None

    def write(self, new: torch.Tensor) -> None:
        """Store `new` [L, n, d]: fill an empty pool, else drop n tokens at random and append."""
        if new.shape[0] != self.num_layers or new.shape[2] != self.memory.shape[2]:
            raise ValueError(f"new memory {tuple(new.shape)} does not fit pool {tuple(self.memory.shape)}")
        new = new.to(self.memory.dtype)
        if self.initialized:
            self.memory = torch.cat([self._keep(new.shape[1]), new], dim=1)
        else:
            self.memory = self._fill(new)
            self.initialized = True
        self.step += 1
        self._changed()

    def _keep(self, n_drop: int) -> torch.Tensor:
        """The pool without `n_drop` tokens chosen uniformly at random, order kept."""
        N = self.size
        layers = self.num_layers if self.drop_per_layer else 1
        keep = torch.stack(
            [torch.randperm(N, generator=self.generator)[: N - n_drop].sort().values for _ in range(layers)]
        ).to(self.memory.device)
        index = keep[:, :, None].expand(self.num_layers, N - n_drop, self.memory.shape[2])
        return torch.gather(self.memory, 1, index)

    def _fill(self, new: torch.Tensor) -> torch.Tensor:
        """A first write fills the whole pool by repeating its tokens."""
        n = new.shape[1]
        copies, rest = divmod(self.size, n)
        parts = [new] * copies + ([new[:, n - rest :]] if rest else [])
        return torch.cat(parts, dim=1).contiguous()

    def reset(self) -> None:
        self.memory = torch.zeros_like(self.memory)
        self.initialized = False
        self.step = 0
        self._changed()

    def clone(self) -> "MemoryPool":
        twin = MemoryPool(self.memory.clone(), self.initialized, drop_per_layer=self.drop_per_layer)
        twin.generator.set_state(self.generator.get_state())
        twin.step = self.step
        return twin

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MemoryPool":
        """Move the pool to `device` and/or cast it to `dtype`, in place; its derived caches are dropped."""
        self.memory = self.memory.to(device=device, dtype=dtype)
        self.prefix_kv = None
        return self

    @property
    def nbytes(self) -> int:
        cached = sum(t.nbytes for t in self.prefix_kv.keys + self.prefix_kv.values) if self.prefix_kv else 0
        return self.memory.nbytes + cached
