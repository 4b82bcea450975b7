"""Where each open memory's pool lives: on the device, in host memory, or only on disk.

The most recently used pools stay on the device up to a byte budget; older ones move to host
memory (when the device is not the host) up to a second budget, and beyond it are evicted to
disk (the store snapshots them first). A pool in use is never moved out by its own use.
Host copies live in page-locked memory, which moves to and from a GPU about twice as fast.
An M+ pool's long-term tokens stay in host memory on every tier: they count against the host
budget, not the device's.

Without a device budget, a CUDA device gets DEVICE_SHARE of the memory free when the
residency is created (after the model is loaded); the rest is left to decode caches and
activations. Without a host budget, pools in host memory (on the CPU, that is every pool) get
HOST_SHARE of the host memory available then, so a server that has touched many memories
moves the older ones to disk instead of filling the machine.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import psutil
import torch

from memagent.model.memory_pool import MemoryPool

DEVICE, HOST, DISK = "device", "host", "disk"
DEVICE_SHARE = 0.5
HOST_SHARE = 0.25  # the rest is the model's, the decode caches', the page cache's and other programs'


def default_device_bytes(device: torch.device) -> int:
    """The pool budget of `device` when none is given (on the CPU, the host's)."""
    if device.type != "cuda":
        return default_host_bytes()
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * DEVICE_SHARE)


def default_host_bytes() -> int:
    return int(psutil.virtual_memory().available * HOST_SHARE)


class Residency:
    def __init__(
        self,
        device: torch.device | str,
        evict: Callable[[Hashable], None],
        *,
        device_bytes: int | None = None,
        host_bytes: int | None = None,
    ):
        self.device = torch.device(device)
        self.evict = evict
        self.device_bytes = device_bytes if device_bytes is not None else default_device_bytes(self.device)
        # With the model on the CPU there is no host tier between the device and disk.
        if self.device.type == "cpu":
            self.host_bytes = 0
        else:
            self.host_bytes = host_bytes if host_bytes is not None else default_host_bytes()
        self.pools: OrderedDict[Hashable, MemoryPool] = OrderedDict()  # least recently used first

    def use(self, key: Hashable, pool: MemoryPool) -> MemoryPool:
        """Mark `pool` most recently used and have it on the device, making room if needed."""
        self.pools[key] = pool
        self.pools.move_to_end(key)
        if not self._on_device(pool):
            pool.to(self.device)
        self._fit(DEVICE, self.device_bytes, keep=key)
        self._fit(HOST, self.host_bytes, keep=key)
        return pool

    def discard(self, key: Hashable) -> None:
        self.pools.pop(key, None)

    def tier(self, key: Hashable) -> str:
        pool = self.pools.get(key)
        if pool is None:
            return DISK
        return DEVICE if self._on_device(pool) else HOST

    def _on_device(self, pool: MemoryPool) -> bool:
        where = pool.memory.device  # "cuda" names the current device, a tensor's device is "cuda:0"
        return where.type == self.device.type and (where.index or 0) == (self.device.index or 0)

    def counts(self) -> dict[str, int]:
        tiers = [self.tier(k) for k in list(self.pools)]
        return {t: tiers.count(t) for t in (DEVICE, HOST)}

    def _on(self, tier: str) -> list[Hashable]:
        return [k for k in self.pools if self.tier(k) == tier]

    def _nbytes(self, key: Hashable, tier: str) -> int:
        """Bytes pool `key` holds on `tier` (a pool on the device keeps some in host memory)."""
        pool = self.pools[key]
        on_device = self.tier(key) == DEVICE
        if tier == DEVICE:
            return pool.nbytes - pool.off_device_nbytes if on_device else 0
        return pool.off_device_nbytes if on_device else pool.nbytes

    def _fit(self, tier: str, budget: int | None, keep: Hashable) -> None:
        if budget is None:
            return
        used = sum(self._nbytes(k, tier) for k in self.pools)
        for key in self._on(tier):  # oldest first
            if used <= budget:
                return
            if key == keep:
                continue
            used -= self._nbytes(key, tier)
            if tier == DEVICE and self.host_bytes != 0:
                self.pools[key].to("cpu", pin=True)
            else:
                del self.pools[key]
                self.evict(key)
