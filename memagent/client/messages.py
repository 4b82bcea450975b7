"""Requests built the same way by the sync and the async client, and the channel they share."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import grpc

from memagent.client.types import Answer, ClientError, Text
from memagent.sampling import SamplingParams, Usage
from memagent.v1 import memagent_pb2 as pb

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
STATE_CHUNK_BYTES = 1 << 20
MAX_ID_CHARS = 128  # the longest memory id a server accepts


SERVER_VARIABLE, TOKEN_VARIABLE = "MEMAGENT_SERVER", "MEMAGENT_TOKEN"
DEFAULT_ADDRESS = "127.0.0.1:50051"


def address_and_token(address: str | None, token: str | None) -> tuple[str, str | None]:
    """What the caller gave, else $MEMAGENT_SERVER and $MEMAGENT_TOKEN, as for the `memagent` command."""
    address = address or os.environ.get(SERVER_VARIABLE) or DEFAULT_ADDRESS
    return address, token if token is not None else os.environ.get(TOKEN_VARIABLE) or None


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def routed(metadata: tuple[tuple[str, str], ...], memory_id: str) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the memory id that Ray Serve routes a call by (a plain server ignores it).
    An id that cannot be a metadata value, or is too long to be an id (a huge header would fail
    the call before the server could say why), is not a valid id either: the server refuses it."""
    if memory_id and len(memory_id) <= MAX_ID_CHARS and memory_id.isascii() and memory_id.isprintable():
        return metadata + (("multiplexed_model_id", memory_id),)
    return metadata


def credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    return grpc.ssl_channel_credentials(root_certificates) if tls or root_certificates else None


@contextlib.contextmanager
def translated_errors():
    """gRPC errors as ClientError, carrying the status code and the server's message."""
    try:
        yield
    except grpc.RpcError as err:
        raise ClientError(err.code(), err.details()) from None


def sampling(params: SamplingParams | None = None, **options) -> pb.SamplingOptions:
    """`params` with `options` (its field names) applied over it, every field sent: the caller's
    defaults are `SamplingParams`', never the server's."""
    params = SamplingParams.of(params, **options)
    request = pb.SamplingOptions(
        max_new_tokens=params.max_new_tokens,
        stop=params.stop,
        do_sample=params.do_sample,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
    )
    if params.seed is not None:
        request.seed = params.seed
    return request


def generate_request(
    memory_id: str, prompt: str, params: SamplingParams | None, options: Mapping
) -> pb.GenerateRequest:
    return pb.GenerateRequest(memory_id=memory_id, prompt=prompt, options=sampling(params, **options))


def chat_request(
    memory_id: str, messages: Sequence[Mapping[str, str]], params: SamplingParams | None, options: Mapping
) -> pb.ChatRequest:
    return pb.ChatRequest(memory_id=memory_id, messages=chat_messages(messages), options=sampling(params, **options))


def ask_request(
    memory_id: str, question: str, params: SamplingParams | None, options: Mapping, grounded: bool = False
) -> pb.AskRequest:
    """Ask's defaults (`SamplingParams.for_ask`) under whatever the caller set."""
    options = sampling(SamplingParams.for_ask(params, **options))
    return pb.AskRequest(memory_id=memory_id, question=question, options=options, grounded=grounded)


def usage(u: pb.Usage) -> Usage:
    return Usage(u.prompt_tokens, u.generated_tokens, u.finish_reason, u.step)


def answer(response: pb.AskResponse) -> Answer:
    return Answer(response.answer, usage(response.usage), response.abstained)


def text(item: str | Text, source: str | None = None, metadata: Mapping[str, str] | None = None) -> pb.Text:
    if isinstance(item, Text):
        return pb.Text(text=item.text, source=item.source, metadata=item.metadata)
    return pb.Text(text=item, source=source or "", metadata=metadata or {})


def inject_request(
    memory_id: str, item: str, source: str | None, metadata: Mapping[str, str] | None, request_id: str | None
) -> pb.InjectRequest:
    return pb.InjectRequest(memory_id=memory_id, texts=[text(item, source, metadata)], request_id=request_id or "")


def inject_stream(
    memory_id: str, texts: Iterable[str | Text], request_id: str | None = None
) -> Iterator[pb.InjectStreamRequest]:
    """One message per text; with `request_id`, text i carries the id `<request_id>/<i>`."""
    for i, item in enumerate(texts):
        yield pb.InjectStreamRequest(
            memory_id=memory_id, text=text(item), request_id=f"{request_id}/{i}" if request_id else ""
        )


def chat_messages(messages: Sequence[Mapping[str, str]]) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages]


# -- state files: `memagent export` writes one, `memagent import` reads it ---------------------
# A tar with header.json, log.wal and pool.safetensors: readable with standard tools.


def write_state_file(path: str | Path, chunks: Iterable[pb.StateChunk]) -> pb.StateHeader:
    header, parts = None, {"log": bytearray(), "pool": bytearray()}
    for chunk in chunks:
        part = chunk.WhichOneof("part")
        if part == "header":
            header = chunk.header
        else:
            parts[part].extend(getattr(chunk, part))
    fields = {f.name: getattr(header, f.name) for f in header.DESCRIPTOR.fields}
    members = {"header.json": json.dumps(fields).encode(), "log.wal": parts["log"], "pool.safetensors": parts["pool"]}
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(bytes(data)))
    return header


def read_state_file(path: str | Path, memory_id: str | None) -> Iterator[pb.StateChunk]:
    with tarfile.open(path, "r") as tar:
        header = json.loads(tar.extractfile("header.json").read())
        log, pool = tar.extractfile("log.wal").read(), tar.extractfile("pool.safetensors").read()
    if memory_id:
        header["memory_id"] = memory_id
    yield pb.StateChunk(header=pb.StateHeader(**header))
    for name, data in (("log", log), ("pool", pool)):
        for at in range(0, len(data), STATE_CHUNK_BYTES):
            yield pb.StateChunk(**{name: data[at : at + STATE_CHUNK_BYTES]})
