"""One thread that runs all memory-store work, in arrival order, behind a bounded queue.

The model is shared and the store is not thread-safe, so everything that touches them runs on
this thread and the event loop never blocks. Arrival order is kept because the thread takes
work first in, first out: writes to a memory apply in the order they came, and a read runs
between writes, never during one. A generation runs one decode step per task, so writes and
other reads interleave with it, and a cancelled or timed-out caller stops it between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


class QueueFull(Exception):
    pass


class EngineWorker:
    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self.pending = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="memagent-engine")

    @contextlib.contextmanager
    def admit(self):
        """Hold a place in the queue for one request, or raise QueueFull."""
        if self.pending >= self.max_pending:
            raise QueueFull(
                f"server busy: {self.pending} requests in progress (max_pending={self.max_pending}); retry later"
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def steps(self, steps: Iterator[T], close: Callable[[], None]) -> AsyncIterator[T]:
        """Drive a blocking iterator one item per task; `close` runs on the worker when done or abandoned."""
        try:
            while (item := await self.run(next, steps, _END)) is not _END:
                yield item
        finally:
            # Queued behind any step still running, so it never races with one.
            self._executor.submit(close)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
