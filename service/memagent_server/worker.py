"""One thread that runs all memory-store work, fairly between tenants, behind bounded admission.

The model is shared and the store is not thread-safe, so everything that touches them runs on
this thread and the event loop never blocks. Each tenant's work waits in its own queue, first
in, first out, and the thread takes one task from each tenant with work in turn (round-robin),
so a tenant with many requests in flight delays another tenant's request by at most one task
each, not by all of its own. Long work runs as steps, one task each (`run_steps`: a write or
a rebuild one forward pass per step; `steps`: a generation one decode step per step), so
other work interleaves with it. A task whose caller went away, or whose deadline passed,
before it ran is skipped, so a cancelled or timed-out caller stops between steps. (The order
of the calls on one memory is the servicer's: see memory_order.py.)

Admission is bounded twice: `max_pending` requests in all, and `max_pending_per_tenant` for
any one tenant, so one tenant cannot take every place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()
SERVER = ""  # the queue of the server's own work (never a tenant's name: those are not empty)


class QueueFull(Exception):
    pass


class DeadlinePassed(Exception):
    """The caller's deadline passed before a task of its call could start."""


class EngineWorker:
    def __init__(self, max_pending: int, max_pending_per_tenant: int | None = None):
        """`max_pending_per_tenant` defaults to half of `max_pending`: a second tenant always finds room."""
        self.max_pending = max_pending
        self.max_pending_per_tenant = max_pending_per_tenant or max(1, max_pending // 2)
        self.pending = 0
        self.starting = 0  # iterations (`steps`) whose first task waits for its turn
        self.pending_by_tenant: Counter[str] = Counter()
        self._queues: dict[str, deque[tuple[Callable[[], object], Future, float | None]]] = {}
        self._turns: deque[str] = deque()  # tenants with queued work, next to run first
        self._lock = threading.Lock()  # queues are filled on the event loop, emptied on the thread
        # One executor task per queued task, each taking whichever task is next in turn.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="memagent-engine")

    @contextlib.contextmanager
    def admit(self, tenant: str):
        """Hold a place in the queue for one request of `tenant`, or raise QueueFull naming the limit."""
        if self.pending >= self.max_pending:
            raise QueueFull(
                f"server busy: {self.pending} requests in progress (max_pending={self.max_pending}); retry later"
            )
        if self.pending_by_tenant[tenant] >= self.max_pending_per_tenant:
            raise QueueFull(
                f"tenant {tenant!r} has {self.pending_by_tenant[tenant]} requests in progress "
                f"(max_pending_per_tenant={self.max_pending_per_tenant}); retry later"
            )
        self.pending += 1
        self.pending_by_tenant[tenant] += 1
        try:
            yield
        finally:
            self.pending -= 1
            self.pending_by_tenant[tenant] -= 1
            if not self.pending_by_tenant[tenant]:
                del self.pending_by_tenant[tenant]

    async def run(self, tenant: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` on the worker thread, in `tenant`'s turn."""
        return await self.call(tenant, functools.partial(fn, *args, **kwargs))

    async def call(self, tenant: str, task: Callable[[], T], deadline: float | None = None) -> T:
        """`task()` on the worker thread, in `tenant`'s turn; DeadlinePassed instead if the turn
        comes after `deadline` (a `time.monotonic()` time)."""
        return await asyncio.wrap_future(self._submit(tenant, task, deadline))

    async def run_steps(self, tenant: str, steps: Generator[object, None, T], deadline: float | None = None) -> T:
        """Drive a step generator one step per task, in `tenant`'s turn each time, to its result.

        Cancelled, or past `deadline`, it stops between steps: the generator is closed on the
        worker (its own cleanup decides what a half-done call leaves)."""
        done = False
        try:
            while True:
                done, result = await self.call(tenant, functools.partial(_step, steps), deadline)
                if done:
                    return result
        finally:
            if not done:  # queued behind its last step, so it never races with one
                self._submit(tenant, steps.close)

    async def steps(
        self,
        tenant: str,
        steps: Iterator[T],
        close: Callable[[], None],
        deadline: float | None = None,
        finished: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[T]:
        """Drive a blocking iterator one item per task; `close` runs on the worker when done or
        abandoned. `finished()`, asked on the worker after each item, ends the iteration without
        the task that would only find its end. Until its first task runs (or is skipped), the
        iteration counts in `starting`."""
        waiting = True

        def started() -> None:
            nonlocal waiting
            with self._lock:
                if waiting:
                    waiting = False
                    self.starting -= 1

        def advance() -> tuple[object, bool]:
            started()
            item = next(steps, _END)
            return item, item is _END or finished()

        with self._lock:
            self.starting += 1
        try:
            while True:
                item, last = await self.call(tenant, advance, deadline)
                if item is not _END:
                    yield item
                if last:
                    return
        finally:
            started()  # its first task was skipped, if it never ran
            # Queued behind any step of this tenant still waiting, so it never races with one.
            self._submit(tenant, close)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)

    def _submit(self, tenant: str, task: Callable[[], T], deadline: float | None = None) -> Future:
        future: Future = Future()
        with self._lock:
            if tenant not in self._queues:
                self._queues[tenant] = deque()
                self._turns.append(tenant)
            self._queues[tenant].append((task, future, deadline))
        self._executor.submit(self._run_next)
        return future

    def _run_next(self) -> None:
        with self._lock:
            tenant = self._turns.popleft()
            queue = self._queues[tenant]
            task, future, deadline = queue.popleft()
            if queue:
                self._turns.append(tenant)
            else:
                del self._queues[tenant]
        if not future.set_running_or_notify_cancel():
            return  # its caller went away while it waited
        if deadline is not None and time.monotonic() >= deadline:
            future.set_exception(DeadlinePassed("deadline exceeded before the server could run it"))
            return
        try:
            future.set_result(task())
        except BaseException as err:  # handed to the caller, as an executor would
            future.set_exception(err)


def _step(steps: Generator[object, None, T]) -> tuple[bool, T | None]:
    """One step: (False, None) while it goes on, (True, its result) once it ended."""
    try:
        next(steps)
    except StopIteration as done:
        return True, done.value
    return False, None
