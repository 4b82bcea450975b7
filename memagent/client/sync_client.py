"""The blocking client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

import grpc

import memagent.client.messages as m
from memagent.client.streams import GenerationStream
from memagent.client.types import Answer, Completion, Entry, ForgetResult, MemoryInfo, Receipt, Text
from memagent.sampling import SamplingParams
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc


class Client:
    """A memagent server's memories, over gRPC.

    >>> with Client("127.0.0.1:50051") as client:        # doctest: +SKIP
    ...     client.create("alice")
    ...     client.inject("alice", "Alice's cat is called Miso.", source="chat")
    ...     client.ask("alice", "What is the cat called?")

    `address` and `token` default to $MEMAGENT_SERVER (else 127.0.0.1:50051) and $MEMAGENT_TOKEN;
    `token` is the bearer token naming your tenant (None for a server run with --no-auth);
    `timeout` (seconds) bounds every call. Errors raise `ClientError` with the status code.
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
            grpc.secure_channel(address, creds, options=m.CHANNEL_OPTIONS)
            if creds
            else grpc.insecure_channel(address, options=m.CHANNEL_OPTIONS)
        )
        self._stub = memagent_pb2_grpc.MemoryServiceStub(self._channel)
        self._metadata = m.call_metadata(token)
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, memory_id: str = ""):
        metadata = m.routed(self._metadata, memory_id or getattr(request, "memory_id", ""))
        with m.translated_errors():
            return method(request, metadata=metadata, timeout=self.timeout)

    # -- memories --------------------------------------------------------------------------

    def create(self, memory_id: str) -> MemoryInfo:
        return MemoryInfo.from_proto(self._call(self._stub.Create, pb.CreateRequest(memory_id=memory_id)))

    def get(self, memory_id: str) -> MemoryInfo:
        return MemoryInfo.from_proto(self._call(self._stub.Get, pb.GetRequest(memory_id=memory_id)))

    def list(self) -> list[MemoryInfo]:
        memories, token = [], ""
        while True:
            page = self._call(self._stub.List, pb.ListRequest(page_token=token))
            memories += [MemoryInfo.from_proto(p) for p in page.memories]
            if not (token := page.next_page_token):
                return memories

    def delete(self, memory_id: str) -> None:
        self._call(self._stub.Delete, pb.DeleteRequest(memory_id=memory_id))

    def reset(self, memory_id: str) -> MemoryInfo:
        return MemoryInfo.from_proto(self._call(self._stub.Reset, pb.ResetRequest(memory_id=memory_id)))

    def fork(self, memory_id: str, new_memory_id: str) -> MemoryInfo:
        request = pb.ForkRequest(memory_id=memory_id, new_memory_id=new_memory_id)
        return MemoryInfo.from_proto(self._call(self._stub.Fork, request))

    def export(self, memory_id: str, path: str | Path) -> None:
        """Save a memory (log and pool) to a file that `import_memory` reads."""
        with m.translated_errors():
            chunks = self._stub.Export(
                pb.ExportRequest(memory_id=memory_id),
                metadata=m.routed(self._metadata, memory_id),
                timeout=self.timeout,
            )
            m.write_state_file(path, chunks)

    def import_memory(self, path: str | Path, memory_id: str | None = None) -> MemoryInfo:
        """Create a memory from an exported file, under `memory_id` or its original id."""
        return MemoryInfo.from_proto(self._call(self._stub.Import, m.read_state_file(path, memory_id)))

    # -- writes ----------------------------------------------------------------------------

    def inject(
        self,
        memory_id: str,
        text: str,
        source: str | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        request_id: str | None = None,
    ) -> Receipt:
        """Write `text` into the memory; returns once it is durable and applied.

        `request_id` (yours, unique per write, at most 128 bytes) makes a retry safe: if the
        server already applied a write with this id, it answers with that write's receipt."""
        request = m.inject_request(memory_id, text, source, metadata, request_id)
        return Receipt.from_proto(self._call(self._stub.Inject, request).receipts[0])

    def inject_many(
        self, memory_id: str, texts: Iterable[str | Text], *, request_id: str | None = None
    ) -> list[Receipt]:
        """Write many texts in one stream (bulk loading), in order.

        `request_id` (yours, unique per stream) makes a retry of the whole stream safe: each text
        is sent with the id `<request_id>/<index>` (at most 128 bytes), so the texts the server
        already applied are answered with their original receipts and only the rest are written."""
        requests = m.inject_stream(memory_id, texts, request_id)
        response = self._call(self._stub.InjectStream, requests, memory_id)
        return [Receipt.from_proto(r) for r in response.receipts]

    def entries(self, memory_id: str) -> list[Entry]:
        entries, token = [], ""
        while True:
            page = self._call(self._stub.ListEntries, pb.ListEntriesRequest(memory_id=memory_id, page_token=token))
            entries += [Entry.from_proto(e) for e in page.entries]
            if not (token := page.next_page_token):
                return entries

    def forget(self, memory_id: str, entry_ids: Iterable[int]) -> ForgetResult:
        """Remove entries and rebuild the memory from the rest of its log."""
        request = pb.ForgetRequest(memory_id=memory_id, entry_ids=list(entry_ids))
        return ForgetResult.from_proto(self._call(self._stub.Forget, request))

    # -- reads -----------------------------------------------------------------------------
    # Each takes a `SamplingParams` and/or its fields as keywords (applied over it): max_new_tokens,
    # stop, do_sample, temperature, top_k, top_p, seed. Streams are GenerationStreams: text
    # pieces, then `.usage`.

    def generate(
        self, memory_id: str, prompt: str, params: SamplingParams | None = None, **options
    ) -> GenerationStream:
        """The continuation of `prompt`, as text pieces while they are decoded."""
        request = m.generate_request(memory_id, prompt, params, options)
        return self._stream(self._stub.Generate, request)

    def complete(self, memory_id: str, prompt: str, params: SamplingParams | None = None, **options) -> Completion:
        """The whole continuation of `prompt`, with its usage."""
        request = m.generate_request(memory_id, prompt, params, options)
        response = self._call(self._stub.Complete, request)
        return Completion(response.text, m.usage(response.usage))

    def chat(
        self, memory_id: str, messages: Sequence[Mapping[str, str]], params: SamplingParams | None = None, **options
    ) -> GenerationStream:
        """The assistant's reply to `messages` ({"role", "content"} dicts), as text pieces."""
        request = m.chat_request(memory_id, messages, params, options)
        return self._stream(self._stub.Chat, request)

    def ask(
        self, memory_id: str, question: str, params: SamplingParams | None = None, *, grounded: bool = False, **options
    ) -> str:
        """A short answer to `question` from what the memory holds (`SamplingParams.for_ask`);
        exactly "I don't know." when it does not hold one. `grounded`: also when no write
        supports the answer (memories of whole writes only)."""
        return self.ask_with_usage(memory_id, question, params, grounded=grounded, **options).text

    def ask_with_usage(
        self, memory_id: str, question: str, params: SamplingParams | None = None, *, grounded: bool = False, **options
    ) -> Answer:
        """`ask`'s answer with its usage and whether it abstained ("I don't know.")."""
        request = m.ask_request(memory_id, question, params, options, grounded)
        return m.answer(self._call(self._stub.Ask, request))

    def _stream(self, method, request) -> GenerationStream:
        metadata = m.routed(self._metadata, request.memory_id)
        return GenerationStream(lambda: method(request, metadata=metadata, timeout=self.timeout))
