"""The calls on one memory run one at a time, in the order they arrived.

The worker interleaves the steps of long calls (a write of many chunks, a forget's rebuild, a
reopened memory's replay), so each memory's calls queue here first, first in, first out: a
write holds its memory until its last step, a read until its start (replay and prefill) ran,
and so a read sees a write all or not at all, and writes apply in arrival order. Calls on
other memories are not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

Key = tuple[str, str]  # (tenant, memory id)


class MemoryOrder:
    def __init__(self) -> None:
        self._locks: dict[Key, asyncio.Lock] = {}
        self._holders: Counter[Key] = Counter()  # calls holding or waiting for each lock

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, *memory_ids: str) -> AsyncIterator[None]:
        """Hold the memories (in a fixed order, so two calls holding two never wait on each other)."""
        async with contextlib.AsyncExitStack() as held:
            for memory_id in sorted(set(memory_ids)):
                await held.enter_async_context(self._one((tenant, memory_id)))
            yield

    @contextlib.asynccontextmanager
    async def _one(self, key: Key) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())  # an asyncio.Lock wakes its waiters in order
        self._holders[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._holders[key] -= 1
            if not self._holders[key]:
                del self._holders[key], self._locks[key]
