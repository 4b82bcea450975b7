"""One memory, reached in-process (an `Engine`) or over gRPC (`memagent.client`).

This is the seam the LangChain and LlamaIndex adapters share: they speak to a `MemoryBackend`
and never know which side of the wire the memory lives on.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # a server-only process need not import torch
    from memagent.client import AsyncClient
    from memagent.engine import Engine


class MemoryBackend(Protocol):
    """Write text into one memory and read from it, sync and async.

    `generate` and `chat` take sampling options as keywords: max_new_tokens, stop, do_sample,
    temperature, top_k, top_p, seed (see `sampling_options`).
    """

    memory: str
    model_name: str

    def write(self, text: str, source: str | None = None) -> None: ...
    def ask(self, question: str) -> str: ...
    def generate(self, prompt: str, **options) -> Iterator[str]: ...
    def chat(self, messages: Sequence[dict], **options) -> Iterator[str]: ...
    def reset(self) -> None: ...
    async def awrite(self, text: str, source: str | None = None) -> None: ...
    async def aask(self, question: str) -> str: ...
    def agenerate(self, prompt: str, **options) -> AsyncIterator[str]: ...
    def achat(self, messages: Sequence[dict], **options) -> AsyncIterator[str]: ...
    async def areset(self) -> None: ...


def connect(
    memory: str,
    *,
    server: str | None = None,
    token: str | None = None,
    timeout: float | None = None,
    engine: Engine | None = None,
) -> MemoryBackend:
    """The backend for `memory` on a memagent server (`server=` address, `token=`, `timeout=`
    seconds per call) or in an in-process `engine`. Either way the memory is created on first use."""
    if not memory:
        raise ValueError("memory= (the memory id) is required")
    if (server is None) == (engine is None):
        raise ValueError("pass either server= (a memagent service address) or engine= (from memagent.load())")
    if engine is not None:
        return EngineBackend(engine, memory)
    return ServerBackend(server, memory, token=token, timeout=timeout)


def sampling_options(
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    stop: Sequence[str] | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
) -> dict:
    """Framework-style parameters as engine sampling options; temperature 0 or None is greedy."""
    options: dict = {"stop": list(stop or [])}
    if max_tokens is not None:
        options["max_new_tokens"] = max_tokens
    if temperature:
        options.update(do_sample=True, temperature=temperature)
    if top_p is not None:
        options["top_p"] = top_p
    if top_k is not None:
        options["top_k"] = top_k
    if seed is not None:
        options["seed"] = seed
    return options


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


_END = object()


async def _iterate_in_thread(pieces: Iterator[str]) -> AsyncIterator[str]:
    """Each step of a blocking iterator in a worker thread, so the event loop keeps running."""
    while (piece := await asyncio.to_thread(next, pieces, _END)) is not _END:
        yield piece


class EngineBackend:
    """A memory in an in-process engine; async calls run the model in a worker thread."""

    def __init__(self, engine: Engine, memory: str):
        self.engine = engine
        self.memory = memory
        self.model_name = engine.name

    def write(self, text: str, source: str | None = None) -> None:
        # An engine keeps no record of sources: the text itself says where it came from.
        self.engine.pool(self.memory).inject(text, progress=False)

    def ask(self, question: str) -> str:
        return self.engine.pool(self.memory).ask(question)

    def generate(self, prompt: str, **options) -> Iterator[str]:
        return self.engine.pool(self.memory).generate(prompt, stream=True, **options)

    def chat(self, messages: Sequence[dict], **options) -> Iterator[str]:
        return self.engine.pool(self.memory).chat(messages, stream=True, **options)

    def reset(self) -> None:
        self.engine.pool(self.memory).reset()

    async def awrite(self, text: str, source: str | None = None) -> None:
        await asyncio.to_thread(self.write, text, source)

    async def aask(self, question: str) -> str:
        return await asyncio.to_thread(self.ask, question)

    def agenerate(self, prompt: str, **options) -> AsyncIterator[str]:
        return _iterate_in_thread(self.generate(prompt, **options))

    def achat(self, messages: Sequence[dict], **options) -> AsyncIterator[str]:
        return _iterate_in_thread(self.chat(messages, **options))

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)


class ServerBackend:
    """A memory on a memagent server. Blocking calls use a `Client`; async ones an `AsyncClient`
    per event loop (a gRPC aio channel belongs to the loop it was made on). Server errors
    surface as `memagent.client.ClientError` with the status code and the server's message."""

    def __init__(self, address: str, memory: str, *, token: str | None = None, timeout: float | None = None):
        from memagent.client import Client

        self.address = address
        self.memory = memory
        self._token = token
        self._timeout = timeout
        self._client = Client(address, token, timeout=timeout)
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._created = False
        self._model_name: str | None = None

    @property
    def model_name(self) -> str:
        """The model serving this memory, as the server names it (asked once)."""
        if self._model_name is None:
            self._model_name = self._ready().get(self.memory).model
        return self._model_name

    def _ready(self):
        """The blocking client, once the memory exists."""
        if not self._created:
            with _existing_is_fine():
                self._client.create(self.memory)
            self._created = True
        return self._client

    async def _aready(self) -> AsyncClient:
        """This event loop's async client, once the memory exists."""
        from memagent.client import AsyncClient

        loop = asyncio.get_running_loop()
        if loop not in self._async_clients:
            self._async_clients[loop] = AsyncClient(self.address, self._token, timeout=self._timeout)
        client = self._async_clients[loop]
        if not self._created:
            with _existing_is_fine():
                await client.create(self.memory)
            self._created = True
        return client

    def write(self, text: str, source: str | None = None) -> None:
        self._ready().inject(self.memory, text, source=source)

    def ask(self, question: str) -> str:
        return self._ready().ask(self.memory, question)

    def generate(self, prompt: str, **options) -> Iterator[str]:
        return self._ready().generate(self.memory, prompt, **options)

    def chat(self, messages: Sequence[dict], **options) -> Iterator[str]:
        return self._ready().chat(self.memory, messages, **options)

    def reset(self) -> None:
        self._ready().reset(self.memory)

    async def awrite(self, text: str, source: str | None = None) -> None:
        await (await self._aready()).inject(self.memory, text, source=source)

    async def aask(self, question: str) -> str:
        return await (await self._aready()).ask(self.memory, question)

    async def agenerate(self, prompt: str, **options) -> AsyncIterator[str]:
        async for piece in (await self._aready()).generate(self.memory, prompt, **options):
            yield piece

    async def achat(self, messages: Sequence[dict], **options) -> AsyncIterator[str]:
        async for piece in (await self._aready()).chat(self.memory, messages, **options):
            yield piece

    async def areset(self) -> None:
        await (await self._aready()).reset(self.memory)


@contextlib.contextmanager
def _existing_is_fine():
    """Creating a memory that already exists is not an error here."""
    from memagent.client import ClientError

    try:
        yield
    except ClientError as err:
        if err.code.name != "ALREADY_EXISTS":
            raise
