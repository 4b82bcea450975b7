"""The asyncio client: the same methods as `Client`, as coroutines and async iterators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

import grpc

import memagent.client.messages as m
from memagent.client.streams import AsyncGenerationStream
from memagent.client.types import Answer, Completion, Entry, ForgetResult, MemoryInfo, Receipt, Text
from memagent.sampling import SamplingParams
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc


class AsyncClient:
    """A memagent server's memories, over gRPC, for asyncio code.

    >>> async with AsyncClient("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     await client.inject("alice", "Alice's cat is called Miso.")
    ...     async for piece in client.generate("alice", "The cat is called"):
    ...         print(piece, end="")
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ):
        address, token = m.address_and_token(address, token)
        creds = m.credentials(tls, root_certificates)
        self._channel = (
            grpc.aio.secure_channel(address, creds, options=m.CHANNEL_OPTIONS)
            if creds
            else grpc.aio.insecure_channel(address, options=m.CHANNEL_OPTIONS)
        )
        self._stub = memagent_pb2_grpc.MemoryServiceStub(self._channel)
        self._metadata = m.call_metadata(token)
        self.timeout = timeout

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method, request, memory_id: str = ""):
        metadata = m.routed(self._metadata, memory_id or getattr(request, "memory_id", ""))
        with m.translated_errors():
            return await method(request, metadata=metadata, timeout=self.timeout)

    # -- memories --------------------------------------------------------------------------

    async def create(self, memory_id: str) -> MemoryInfo:
        return MemoryInfo.from_proto(await self._call(self._stub.Create, pb.CreateRequest(memory_id=memory_id)))

    async def get(self, memory_id: str) -> MemoryInfo:
        return MemoryInfo.from_proto(await self._call(self._stub.Get, pb.GetRequest(memory_id=memory_id)))

    async def list(self) -> list[MemoryInfo]:
        memories, token = [], ""
        while True:
            page = await self._call(self._stub.List, pb.ListRequest(page_token=token))
            memories += [MemoryInfo.from_proto(p) for p in page.memories]
            if not (token := page.next_page_token):
                return memories

    async def delete(self, memory_id: str) -> None:
        await self._call(self._stub.Delete, pb.DeleteRequest(memory_id=memory_id))

    async def reset(self, memory_id: str) -> MemoryInfo:
        return MemoryInfo.from_proto(await self._call(self._stub.Reset, pb.ResetRequest(memory_id=memory_id)))

    async def fork(self, memory_id: str, new_memory_id: str) -> MemoryInfo:
        request = pb.ForkRequest(memory_id=memory_id, new_memory_id=new_memory_id)
        return MemoryInfo.from_proto(await self._call(self._stub.Fork, request))

    async def export(self, memory_id: str, path: str | Path) -> None:
        with m.translated_errors():
            call = self._stub.Export(
                pb.ExportRequest(memory_id=memory_id),
                metadata=m.routed(self._metadata, memory_id),
                timeout=self.timeout,
            )
            m.write_state_file(path, [chunk async for chunk in call])

    async def import_memory(self, path: str | Path, memory_id: str | None = None) -> MemoryInfo:
        chunks = list(m.read_state_file(path, memory_id))
        return MemoryInfo.from_proto(await self._call(self._stub.Import, iter(chunks)))

    # -- writes ----------------------------------------------------------------------------

    async def inject(
        self,
        memory_id: str,
        text: str,
        source: str | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        request_id: str | None = None,
    ) -> Receipt:
        request = m.inject_request(memory_id, text, source, metadata, request_id)
        return Receipt.from_proto((await self._call(self._stub.Inject, request)).receipts[0])

    async def inject_many(
        self, memory_id: str, texts: Iterable[str | Text], *, request_id: str | None = None
    ) -> list[Receipt]:
        requests = m.inject_stream(memory_id, texts, request_id)
        response = await self._call(self._stub.InjectStream, requests, memory_id)
        return [Receipt.from_proto(r) for r in response.receipts]

    async def entries(self, memory_id: str) -> list[Entry]:
        entries, token = [], ""
        while True:
            request = pb.ListEntriesRequest(memory_id=memory_id, page_token=token)
            page = await self._call(self._stub.ListEntries, request)
            entries += [Entry.from_proto(e) for e in page.entries]
            if not (token := page.next_page_token):
                return entries

    async def forget(self, memory_id: str, entry_ids: Iterable[int]) -> ForgetResult:
        request = pb.ForgetRequest(memory_id=memory_id, entry_ids=list(entry_ids))
        return ForgetResult.from_proto(await self._call(self._stub.Forget, request))

    # -- reads -----------------------------------------------------------------------------
    # Each takes a `SamplingParams` and/or its fields as keywords (applied over it): max_new_tokens,
    # stop, do_sample, temperature, top_k, top_p, seed. Streams are AsyncGenerationStreams: text
    # pieces, then `.usage`.

    def generate(
        self, memory_id: str, prompt: str, params: SamplingParams | None = None, **options
    ) -> AsyncGenerationStream:
        """The continuation of `prompt`, as text pieces while they are decoded."""
        request = m.generate_request(memory_id, prompt, params, options)
        return self._stream(self._stub.Generate, request)

    async def complete(
        self, memory_id: str, prompt: str, params: SamplingParams | None = None, **options
    ) -> Completion:
        """The whole continuation of `prompt`, with its usage."""
        request = m.generate_request(memory_id, prompt, params, options)
        response = await self._call(self._stub.Complete, request)
        return Completion(response.text, m.usage(response.usage))

    def chat(
        self, memory_id: str, messages: Sequence[Mapping[str, str]], params: SamplingParams | None = None, **options
    ) -> AsyncGenerationStream:
        """The assistant's reply to `messages` ({"role", "content"} dicts), as text pieces."""
        request = m.chat_request(memory_id, messages, params, options)
        return self._stream(self._stub.Chat, request)

    async def ask(
        self, memory_id: str, question: str, params: SamplingParams | None = None, *, grounded: bool = False, **options
    ) -> str:
        """A short answer to `question` from what the memory holds (`SamplingParams.for_ask`);
        exactly "I don't know." when it does not hold one. `grounded`: also when no write
        supports the answer (memories of whole writes only)."""
        return (await self.ask_with_usage(memory_id, question, params, grounded=grounded, **options)).text

    async def ask_with_usage(
        self, memory_id: str, question: str, params: SamplingParams | None = None, *, grounded: bool = False, **options
    ) -> Answer:
        """`ask`'s answer with its usage and whether it abstained ("I don't know.")."""
        request = m.ask_request(memory_id, question, params, options, grounded)
        return m.answer(await self._call(self._stub.Ask, request))

    def _stream(self, method, request) -> AsyncGenerationStream:
        metadata = m.routed(self._metadata, request.memory_id)
        return AsyncGenerationStream(lambda: method(request, metadata=metadata, timeout=self.timeout))
