"""MemoryService: each RPC checks its request, runs a store call on the engine worker, answers.

A call on a memory first waits its turn on that memory (memory_order.py), then runs on the
worker, long calls a step at a time; past the caller's deadline, or once the caller went away,
it stops between steps.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator

from memagent.abstention import is_abstention
from memagent.sampling import ASK_DEFAULTS, SamplingParams
from memagent.store import Generation, MemoryStore
from memagent.store.errors import quote
from memagent.store.memory_store import STATE_FORMAT
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc
from memagent_server import convert
from memagent_server.auth import current_tenant
from memagent_server.limits import LimitExceeded, Limits
from memagent_server.memory_order import MemoryOrder
from memagent_server.metrics import Metrics
from memagent_server.status import answers_with_status
from memagent_server.worker import EngineWorker

STATE_CHUNK_BYTES = 1 << 20


class MemoryServicer(memagent_pb2_grpc.MemoryServiceServicer):
    def __init__(self, store: MemoryStore, worker: EngineWorker, limits: Limits, metrics: Metrics):
        self.store = store
        self.worker = worker
        store.engine.batch.serving = True  # long prompts prefill in short steps
        store.engine.batch.others_starting = lambda: worker.starting > 0  # reads arriving together step together
        self.limits = limits
        self.metrics = metrics
        self.order = MemoryOrder()

    def _sampling(self, options: pb.SamplingOptions, defaults: SamplingParams | None = None) -> SamplingParams:
        return self.limits.sampling(convert.sampling(options, defaults or SamplingParams()))

    @contextlib.asynccontextmanager
    async def _turn(self, *memory_ids: str) -> AsyncIterator[str]:
        """The caller's tenant, once its call holds a place in the bounded queue and its turn on
        `memory_ids` came (after the calls before it on them)."""
        tenant = current_tenant()
        with self.worker.admit(tenant):
            async with self.order.hold(tenant, *memory_ids):
                yield tenant

    async def _call(self, context, memory_ids: tuple[str, ...], fn: Callable, *args, **kwargs):
        """A store call `fn(tenant, *args, **kwargs)` on the worker, in its turn."""
        async with self._turn(*memory_ids) as tenant:
            return await self.worker.call(tenant, functools.partial(fn, tenant, *args, **kwargs), _deadline(context))

    async def _steps(self, context, memory_ids: tuple[str, ...], steps: Callable[..., Generator], *args, **kwargs):
        """A store call's step generator (`MemoryStore.inject_steps`, ...) on the worker, a step a turn."""
        async with self._turn(*memory_ids) as tenant:
            return await self.worker.run_steps(tenant, steps(tenant, *args, **kwargs), _deadline(context))

    # -- memories --------------------------------------------------------------------------

    @answers_with_status
    async def Create(self, request: pb.CreateRequest, context) -> pb.Memory:
        memory_id = request.memory_id
        return convert.memory(await self._call(context, (memory_id,), self.store.create, memory_id))

    @answers_with_status
    async def Get(self, request: pb.GetRequest, context) -> pb.Memory:
        memory_id = request.memory_id
        return convert.memory(await self._call(context, (memory_id,), self.store.get, memory_id))

    @answers_with_status
    async def List(self, request: pb.ListRequest, context) -> pb.ListResponse:
        size = self.limits.page_size(request.page_size)
        after = _decode_token(self.limits.page_token(request.page_token))
        infos = await self._call(context, (), self.store.list, after=after, limit=size + 1)
        more = len(infos) > size
        infos = infos[:size]
        token = _encode_token(infos[-1].memory_id) if more else ""
        return pb.ListResponse(memories=[convert.memory(i) for i in infos], next_page_token=token)

    @answers_with_status
    async def Delete(self, request: pb.DeleteRequest, context) -> pb.DeleteResponse:
        await self._call(context, (request.memory_id,), self.store.delete, request.memory_id)
        return pb.DeleteResponse()

    @answers_with_status
    async def Reset(self, request: pb.ResetRequest, context) -> pb.Memory:
        memory_id = request.memory_id
        return convert.memory(await self._call(context, (memory_id,), self.store.reset, memory_id))

    @answers_with_status
    async def Fork(self, request: pb.ForkRequest, context) -> pb.Memory:
        ids = (request.memory_id, request.new_memory_id)
        return convert.memory(await self._steps(context, ids, self.store.fork_steps, *ids))

    @answers_with_status
    async def Export(self, request: pb.ExportRequest, context) -> AsyncIterator[pb.StateChunk]:
        memory_id = request.memory_id
        state = await self._steps(context, (memory_id,), self.store.export_steps, memory_id)
        yield pb.StateChunk(
            header=pb.StateHeader(
                memory_id=state.memory_id,
                format=state.format,
                model=state.fingerprint,
                step=state.step,
                entries=state.entries,
            )
        )
        for at in range(0, len(state.log), STATE_CHUNK_BYTES):
            yield pb.StateChunk(log=state.log[at : at + STATE_CHUNK_BYTES])
        for at in range(0, len(state.pool), STATE_CHUNK_BYTES):
            yield pb.StateChunk(pool=state.pool[at : at + STATE_CHUNK_BYTES])

    @answers_with_status
    async def Import(self, requests: AsyncIterator[pb.StateChunk], context) -> pb.Memory:
        """The state is spooled to unnamed files beside the memories, not held in memory, while it
        arrives; the call holds a place in the queue meanwhile, so imports count in max_pending."""
        tenant = current_tenant()
        header, size = None, 0
        with self.worker.admit(tenant), _spool(self.store) as log, _spool(self.store) as pool:
            async for chunk in requests:
                part = chunk.WhichOneof("part")
                if header is None and part != "header":
                    raise ValueError("the first message of an import must be its header")
                if part == "header":
                    if header is not None:
                        raise ValueError("an import has one header")
                    header = chunk.header
                    if header.format != STATE_FORMAT:
                        raise ValueError(f"unknown state format {quote(header.format)}; expected {STATE_FORMAT!r}")
                    continue
                size += len(chunk.log) + len(chunk.pool)
                if size > self.limits.max_state_bytes:
                    raise LimitExceeded(f"state over the limit max_state_bytes={self.limits.max_state_bytes}")
                (log if part == "log" else pool).write(chunk.log or chunk.pool)
            if header is None:
                raise ValueError("empty import: send a header, then the log (and the pool)")
            async with self.order.hold(tenant, header.memory_id):
                steps = _import_spooled(self.store, tenant, header.memory_id, log, pool)
                info = await self.worker.run_steps(tenant, steps, _deadline(context))
        return convert.memory(info)

    # -- writes ----------------------------------------------------------------------------

    @answers_with_status
    async def Inject(self, request: pb.InjectRequest, context) -> pb.InjectResponse:
        texts = self.limits.texts(request.texts)
        request_id = self.limits.request_id(request.request_id)
        memory_id = request.memory_id
        receipts = await self._steps(
            context, (memory_id,), self.store.inject_steps, memory_id, texts, request_id=request_id
        )
        self.metrics.tokens_written.inc(sum(r.tokens for r in receipts))
        return pb.InjectResponse(receipts=[convert.receipt(r) for r in receipts])

    @answers_with_status
    async def InjectStream(self, requests: AsyncIterator[pb.InjectStreamRequest], context) -> pb.InjectResponse:
        receipts = []
        async for i, request in _enumerate(requests):
            try:
                text = self.limits.text(request.text, f"message {i}")
                request_id = self.limits.request_id(request.request_id)
                memory_id = request.memory_id
                written = await self._steps(
                    context, (memory_id,), self.store.inject_steps, memory_id, [text], request_id=request_id
                )
            except Exception as err:
                if receipts:  # say what the earlier messages did; they are durable
                    err.args = (f"{err} (the {len(receipts)} texts before it were written)",)
                raise
            self.metrics.tokens_written.inc(written[0].tokens)
            receipts.append(convert.receipt(written[0]))
        if not receipts:
            raise ValueError("no texts given")
        return pb.InjectResponse(receipts=receipts)

    @answers_with_status
    async def ListEntries(self, request: pb.ListEntriesRequest, context) -> pb.ListEntriesResponse:
        size = self.limits.page_size(request.page_size)
        after = _decode_entry_token(self.limits.page_token(request.page_token))
        memory_id = request.memory_id
        entries = await self._call(context, (memory_id,), self.store.entries, memory_id)
        page = [e for e in entries if e.entry_id > after][: size + 1]
        token = _encode_token(str(page[size - 1].entry_id)) if len(page) > size else ""
        return pb.ListEntriesResponse(entries=[convert.entry(e) for e in page[:size]], next_page_token=token)

    @answers_with_status
    async def Forget(self, request: pb.ForgetRequest, context) -> pb.ForgetResponse:
        start = time.perf_counter()
        entry_ids = self.limits.entry_ids(request.entry_ids)
        memory_id = request.memory_id
        info = await self._steps(context, (memory_id,), self.store.forget_steps, memory_id, entry_ids)
        ms = (time.perf_counter() - start) * 1000
        return pb.ForgetResponse(forgotten=len(set(request.entry_ids)), memory=convert.memory(info), ms=ms)

    # -- reads -----------------------------------------------------------------------------

    @answers_with_status
    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        params = self._sampling(request.options)
        prompt = self.limits.prompt(request.prompt)
        async for response in self._stream(context, self.store.generate, request.memory_id, prompt, params):
            yield response

    @answers_with_status
    async def Chat(self, request: pb.ChatRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        params = self._sampling(request.options)
        messages = self.limits.messages(request.messages)
        async for response in self._stream(context, self.store.chat, request.memory_id, messages, params):
            yield response

    @answers_with_status
    async def Complete(self, request: pb.GenerateRequest, context) -> pb.CompleteResponse:
        params = self._sampling(request.options)
        prompt = self.limits.prompt(request.prompt)
        text, usage = await self._collect(context, self.store.generate, request.memory_id, prompt, params)
        return pb.CompleteResponse(text=text, usage=usage)

    @answers_with_status
    async def Ask(self, request: pb.AskRequest, context) -> pb.AskResponse:
        params = self._sampling(request.options, ASK_DEFAULTS)
        question = self.limits.prompt(request.question, "question")
        text, usage = await self._collect(context, self.store.ask, request.memory_id, question, params, request.grounded)
        return pb.AskResponse(answer=text.strip(), usage=usage, abstained=is_abstention(text))

    async def _stream(self, context, start_fn, memory_id: str, *args) -> AsyncIterator[pb.GenerateResponse]:
        """Text pieces as they are decoded, then the usage; stops between steps at the deadline.

        The read holds its memory until its start (replay, prefill) ran: from then on it reads
        its own copy of the memory, and the memory's next call may run between its steps. A
        short answer takes one turn of the worker: the generation looks its memory up in its
        first step, and its last piece says that it ended."""
        tenant, start, deadline = current_tenant(), time.perf_counter(), _deadline(context)
        with self.worker.admit(tenant):
            async with contextlib.AsyncExitStack() as turn:
                await turn.enter_async_context(self.order.hold(tenant, memory_id))
                generation: Generation = start_fn(tenant, memory_id, *args)
                pieces = self.worker.steps(tenant, generation, generation.close, deadline, lambda: generation.finished)
                async for piece in pieces:
                    if generation.started:
                        await turn.aclose()
                    if piece:
                        yield pb.GenerateResponse(text=piece)
        self.metrics.tokens_generated.inc(generation.usage.completion_tokens)
        yield pb.GenerateResponse(usage=convert.usage(generation.usage, (time.perf_counter() - start) * 1000))

    async def _collect(self, context, start_fn, memory_id: str, *args) -> tuple[str, pb.Usage]:
        pieces, usage = [], None
        async for response in self._stream(context, start_fn, memory_id, *args):
            if response.HasField("usage"):
                usage = response.usage
            else:
                pieces.append(response.text)
        return "".join(pieces), usage


def _deadline(context) -> float | None:
    """The caller's deadline as a `time.monotonic()` time, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _spool(store: MemoryStore):
    """An unnamed file on the store's disk, gone when closed (or when the process ends)."""
    return tempfile.TemporaryFile(dir=store.root)


def _import_spooled(store: MemoryStore, tenant: str, memory_id: str, log, pool) -> Generator:
    """Steps on the worker: one import at a time is read back into memory, to be checked, replayed and written."""
    log.seek(0)
    pool.seek(0)
    return (yield from store.import_steps(tenant, memory_id, log.read(), pool.read() or None))


async def _enumerate(items: AsyncIterator):
    i = 0
    async for item in items:
        yield i, item
        i += 1


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except ValueError as err:
        raise ValueError(f"page_token {quote(token)} is not one this server issued") from err


def _decode_entry_token(token: str) -> int:
    after = _decode_token(token)
    if after and not after.isdigit():
        raise ValueError(f"page_token {quote(token)} is not one this server issued")
    return int(after or 0)
