"""Memories reached in-process (an `Engine`) or over gRPC (`memagent.client`).

This is the seam the LangChain and LlamaIndex adapters share: they speak to a `MemoryBackend`
and never know which side of the wire the memory lives on. A backend is bound to one memory
or to none; `using(memory_id)` gives the backend of another memory over the same connection,
which is how one agent object serves many users. `close()` (or `with`) closes the connection
a backend opened; the backends `using` made share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Self

from memagent.client.messages import SERVER_VARIABLE, TOKEN_VARIABLE
from memagent.sampling import SamplingParams, Usage

if TYPE_CHECKING:  # a server-only process need not import torch
    from memagent.client import AsyncClient
    from memagent.engine import Engine


@dataclass(frozen=True)
class LoggedText:
    """One text in a memory's log, as written: `entry_id` names it to `forget`."""

    entry_id: int
    text: str
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class Pieces(Protocol):
    """A generation's text pieces; `usage` is None until they are exhausted, then a `Usage`."""

    usage: Usage | None

    def __iter__(self) -> Iterator[str]: ...


class AsyncPieces(Protocol):
    """`Pieces` for `async for`."""

    usage: Usage | None

    def __aiter__(self) -> AsyncIterator[str]: ...


class MemoryBackend(Protocol):
    """Write text into one memory, read its log, and read from it, sync and async.

    `generate` and `chat` take a `memagent.sampling.SamplingParams` and return `Pieces`
    (`agenerate` and `achat`: `AsyncPieces`, once awaited).
    """

    memory: str | None
    model_name: str

    def using(self, memory: str) -> MemoryBackend: ...
    def memory_ids(self) -> list[str]: ...
    def write(self, text: str, source: str | None = None, metadata: Mapping[str, str] | None = None) -> None: ...
    def entries(self) -> list[LoggedText]: ...
    def forget(self, entry_ids: Sequence[int]) -> None: ...
    def ask(self, question: str, grounded: bool = False) -> str: ...
    def generate(self, prompt: str, params: SamplingParams) -> Pieces: ...
    def chat(self, messages: Sequence[dict], params: SamplingParams) -> Pieces: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...
    async def awrite(self, text: str, source: str | None = None, metadata: Mapping[str, str] | None = None) -> None: ...
    async def aentries(self) -> list[LoggedText]: ...
    async def aforget(self, entry_ids: Sequence[int]) -> None: ...
    async def aask(self, question: str, grounded: bool = False) -> str: ...
    async def agenerate(self, prompt: str, params: SamplingParams) -> AsyncPieces: ...
    async def achat(self, messages: Sequence[dict], params: SamplingParams) -> AsyncPieces: ...
    async def areset(self) -> None: ...
    async def aclose(self) -> None: ...


def connect(
    memory: str | None = None,
    *,
    server: str | None = None,
    token: str | None = None,
    timeout: float | None = None,
    engine: Engine | None = None,
) -> MemoryBackend:
    """The backend for `memory` on a memagent server (`server=` address, `token=`, `timeout=`
    seconds per call) or in an in-process `engine`. Either way the memory is created on first use.

    Without `engine=`, `server` and `token` default to $MEMAGENT_SERVER and $MEMAGENT_TOKEN, as
    for the `memagent` command. Without `memory`, each call names its memory through `using`.
    """
    if memory is not None and not memory:
        raise ValueError("memory= (the memory id) must not be empty")
    if engine is None:
        server = server or os.environ.get(SERVER_VARIABLE) or None
        token = token if token is not None else os.environ.get(TOKEN_VARIABLE) or None
    if (server is None) == (engine is None):
        raise ValueError(
            "pass either server= (a memagent service address, or set $MEMAGENT_SERVER) "
            "or engine= (from memagent.load())"
        )
    if engine is not None:
        return EngineBackend(_EngineLogs.of(engine), memory)
    return ServerBackend(_ServerConnection(server, token, timeout), memory)


def usage_fields(usage: Usage | None, memory: str | None) -> dict:
    """How a generation ended, for an adapter's response metadata: token counts, finish reason,
    and which memory at which pool step it read."""
    if usage is None:
        return {}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "finish_reason": usage.finish_reason,
        "memory": memory,
        "step": usage.step,
    }


# Chat templates and the service know three roles; a tool's result reaches the model as user text.
_CHAT_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
}


def chat_message(role: str, content: str) -> dict:
    """A message in the form `chat` takes, whatever the framework called its role."""
    return {"role": _CHAT_ROLES.get(role, "user"), "content": content}


class ClosesBackend:
    """`close()` / `aclose()` and `with` / `async with` for an adapter holding a `backend`
    (a `MemoryBackend`; no annotation here, so pydantic adapters do not take it for a field)."""

    def close(self) -> None:
        self.backend.close()

    async def aclose(self) -> None:
        await self.backend.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


_END = object()


class _PiecesInThread:
    """Each step of a blocking generation in a worker thread, so the event loop keeps running."""

    def __init__(self, pieces: Pieces):
        self._pieces = pieces

    @property
    def usage(self) -> Usage | None:
        return self._pieces.usage

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        piece = await asyncio.to_thread(next, self._pieces, _END)
        if piece is _END:
            raise StopAsyncIteration
        return piece


class _BoundMemory:
    """The memory id a backend is bound to, required by every call that reads or writes."""

    def __init__(self, memory: str | None):
        self.memory = memory

    @property
    def _id(self) -> str:
        if not self.memory:
            raise ValueError(
                "no memory chosen: build the adapter with memory=, or name one per call "
                'with config={"configurable": {"memory_id": ...}}'
            )
        return self.memory


@dataclass
class _EngineLog:
    """What this process wrote into one engine memory, and the pool writes that took."""

    texts: list[LoggedText] = field(default_factory=list)
    next_id: int = 1
    steps: int = 0


class _EngineLogs:
    """An engine keeps no log of its own (no sources, no metadata, no entries): the backends of
    one engine keep one here, in this process, for what they wrote. It lets `entries` and
    `forget` work on an engine as on a server; it is lost when the process ends."""

    _of_engine: weakref.WeakKeyDictionary[Engine, _EngineLogs] = weakref.WeakKeyDictionary()
    _of_engine_lock = threading.Lock()

    def __init__(self, engine: Engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.logs: dict[str, _EngineLog] = {}

    @classmethod
    def of(cls, engine: Engine) -> _EngineLogs:
        """The one log keeper of `engine`."""
        with cls._of_engine_lock:
            if engine not in cls._of_engine:
                cls._of_engine[engine] = cls(engine)
            return cls._of_engine[engine]


class EngineBackend(_BoundMemory):
    """A memory in an in-process engine; async calls run the model in a worker thread."""

    def __init__(self, logs: _EngineLogs, memory: str | None):
        super().__init__(memory)
        self._logs = logs
        self.engine = logs.engine
        self.model_name = logs.engine.name

    def using(self, memory: str) -> EngineBackend:
        return self if memory == self.memory else EngineBackend(self._logs, memory)

    def memory_ids(self) -> list[str]:
        """Every memory of the engine."""
        with self.engine.lock:
            return list(self.engine.pools)

    def _pool(self):
        return self.engine.pool(self._id)

    def write(self, text: str, source: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        pool = self._pool()
        with self._logs.lock:
            log = self._logs.logs.setdefault(self._id, _EngineLog())
            receipt = pool.inject(text, progress=False)
            log.texts.append(LoggedText(log.next_id, text, source or "", dict(metadata or {})))
            log.next_id += 1
            log.steps += receipt.chunks

    def entries(self) -> list[LoggedText]:
        with self._logs.lock:
            return list(self._logs.logs.get(self._id, _EngineLog()).texts)

    def forget(self, entry_ids: Sequence[int]) -> None:
        """Rebuild the memory from the rest of the log. Refused, with nothing changed, when an id
        is unknown or the memory holds writes made around this log (they would be lost)."""
        pool = self._pool()
        with self._logs.lock:
            log = self._logs.logs.get(self._id, _EngineLog())
            unknown = set(entry_ids) - {t.entry_id for t in log.texts}
            if unknown:
                raise KeyError(f"entries {sorted(unknown)} are not in the log of memory {self._id!r}")
            if pool.step != log.steps:
                raise RuntimeError(
                    f"memory {self._id!r} holds {pool.step - log.steps} writes made without this backend; "
                    "forgetting would rebuild it without them"
                )
            pool.reset()
            log.texts = [t for t in log.texts if t.entry_id not in set(entry_ids)]
            log.steps = sum(pool.inject(t.text, progress=False).chunks for t in log.texts)

    def ask(self, question: str, grounded: bool = False) -> str:
        return self._pool().ask(question, grounded=grounded)

    def generate(self, prompt: str, params: SamplingParams) -> Pieces:
        return self._pool().generate(prompt, params, stream=True)

    def chat(self, messages: Sequence[dict], params: SamplingParams) -> Pieces:
        return self._pool().chat(messages, params, stream=True)

    def reset(self) -> None:
        pool = self._pool()
        with self._logs.lock:
            pool.reset()
            self._logs.logs.pop(self._id, None)

    def close(self) -> None:
        """Nothing to close: the engine belongs to whoever loaded it."""

    async def awrite(self, text: str, source: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        await asyncio.to_thread(self.write, text, source, metadata)

    async def aentries(self) -> list[LoggedText]:
        return self.entries()

    async def aforget(self, entry_ids: Sequence[int]) -> None:
        await asyncio.to_thread(self.forget, entry_ids)

    async def aask(self, question: str, grounded: bool = False) -> str:
        return await asyncio.to_thread(self.ask, question, grounded)

    async def agenerate(self, prompt: str, params: SamplingParams) -> AsyncPieces:
        return _PiecesInThread(self.generate(prompt, params))

    async def achat(self, messages: Sequence[dict], params: SamplingParams) -> AsyncPieces:
        return _PiecesInThread(self.chat(messages, params))

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)

    async def aclose(self) -> None:
        self.close()


class _ServerConnection:
    """The clients of one server address: a blocking `Client`, and an `AsyncClient` per event loop
    (a gRPC aio channel belongs to the loop it was made on); which memories exist already."""

    def __init__(self, address: str, token: str | None, timeout: float | None):
        from memagent.client import Client

        self.address = address
        self.token = token
        self.timeout = timeout
        self.client = Client(address, token, timeout=timeout)
        self.async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self.created: set[str] = set()
        self.model_name: str | None = None

    def async_client(self) -> AsyncClient:
        from memagent.client import AsyncClient

        loop = asyncio.get_running_loop()
        if loop not in self.async_clients:
            self.async_clients[loop] = AsyncClient(self.address, self.token, timeout=self.timeout)
        return self.async_clients[loop]

    def close(self) -> None:
        """Close the blocking client, and the async clients of loops that are not running here
        (a running loop's client is closed by `aclose` from that loop)."""
        self.client.close()
        for loop, client in list(self.async_clients.items()):
            if loop.is_closed():
                continue  # the channel went with its loop
            if loop.is_running():
                if _running_loop() is loop:
                    continue
                asyncio.run_coroutine_threadsafe(client.close(), loop).result()
            else:
                loop.run_until_complete(client.close())
            del self.async_clients[loop]

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        if (client := self.async_clients.pop(loop, None)) is not None:
            await client.close()
        self.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class ServerBackend(_BoundMemory):
    """A memory on a memagent server. Server errors surface as `memagent.client.ClientError`
    with the status code and the server's message."""

    def __init__(self, connection: _ServerConnection, memory: str | None):
        super().__init__(memory)
        self._connection = connection
        self.address = connection.address

    def using(self, memory: str) -> ServerBackend:
        return self if memory == self.memory else ServerBackend(self._connection, memory)

    def memory_ids(self) -> list[str]:
        """Every memory of the token's tenant."""
        return [m.memory_id for m in self._connection.client.list()]

    @property
    def model_name(self) -> str:
        """The model serving this memory, as the server names it (asked once per connection);
        "memagent" while no memory has been named."""
        if self._connection.model_name is None:
            if not self.memory:
                return "memagent"
            self._connection.model_name = self._ready().get(self.memory).model
        return self._connection.model_name

    def _ready(self):
        """The blocking client, once the memory exists."""
        memory = self._id
        if memory not in self._connection.created:
            with _existing_is_fine():
                self._connection.client.create(memory)
            self._connection.created.add(memory)
        return self._connection.client

    async def _aready(self) -> AsyncClient:
        """This event loop's async client, once the memory exists."""
        memory = self._id
        client = self._connection.async_client()
        if memory not in self._connection.created:
            with _existing_is_fine():
                await client.create(memory)
            self._connection.created.add(memory)
        return client

    def write(self, text: str, source: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        self._ready().inject(self._id, text, source=source, metadata=metadata)

    def entries(self) -> list[LoggedText]:
        return [_logged(e) for e in self._ready().entries(self._id)]

    def forget(self, entry_ids: Sequence[int]) -> None:
        self._ready().forget(self._id, entry_ids)

    def ask(self, question: str, grounded: bool = False) -> str:
        return self._ready().ask(self._id, question, grounded=grounded)

    def generate(self, prompt: str, params: SamplingParams) -> Pieces:
        return self._ready().generate(self._id, prompt, params)

    def chat(self, messages: Sequence[dict], params: SamplingParams) -> Pieces:
        return self._ready().chat(self._id, messages, params)

    def reset(self) -> None:
        self._ready().reset(self._id)

    def close(self) -> None:
        self._connection.close()

    async def awrite(self, text: str, source: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        await (await self._aready()).inject(self._id, text, source=source, metadata=metadata)

    async def aentries(self) -> list[LoggedText]:
        return [_logged(e) for e in await (await self._aready()).entries(self._id)]

    async def aforget(self, entry_ids: Sequence[int]) -> None:
        await (await self._aready()).forget(self._id, entry_ids)

    async def aask(self, question: str, grounded: bool = False) -> str:
        return await (await self._aready()).ask(self._id, question, grounded=grounded)

    async def agenerate(self, prompt: str, params: SamplingParams) -> AsyncPieces:
        return (await self._aready()).generate(self._id, prompt, params)

    async def achat(self, messages: Sequence[dict], params: SamplingParams) -> AsyncPieces:
        return (await self._aready()).chat(self._id, messages, params)

    async def areset(self) -> None:
        await (await self._aready()).reset(self._id)

    async def aclose(self) -> None:
        await self._connection.aclose()


def _logged(entry) -> LoggedText:
    return LoggedText(entry.entry_id, entry.text, entry.source, dict(entry.metadata))


@contextlib.contextmanager
def _existing_is_fine():
    """Creating a memory that already exists is not an error here."""
    from memagent.client import ClientError

    try:
        yield
    except ClientError as err:
        if err.code.name != "ALREADY_EXISTS":
            raise
