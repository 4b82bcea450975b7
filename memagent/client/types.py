"""What the client returns: small frozen dataclasses mirroring the protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from memagent.sampling import Usage
from memagent.v1 import memagent_pb2 as pb

RESIDENCY = {pb.RESIDENCY_DEVICE: "device", pb.RESIDENCY_HOST: "host", pb.RESIDENCY_DISK: "disk"}


class ClientError(Exception):
    """A call the server refused or could not do; `code` is its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Receipt:
    entry_id: int  # names the entry in entries() and forget()
    tokens: int
    chunks: int
    step: int  # the memory's write count after this text
    ms: float

    @classmethod
    def from_proto(cls, r: pb.Receipt) -> Receipt:
        return cls(r.entry_id, r.tokens, r.chunks, r.step, r.ms)


@dataclass(frozen=True)
class MemoryInfo:
    memory_id: str
    step: int
    entries: int
    tokens_written: int
    pool_bytes: int
    disk_bytes: int
    created: datetime
    updated: datetime
    model: str
    residency: str  # "device", "host" or "disk"
    damage: str = ""  # why the memory refuses calls until an operator repairs it; empty when sound
    # M+: tokens in the long-term memory's fullest layer; 0 without one; None until the server knows
    long_term_tokens: int | None = 0

    @classmethod
    def from_proto(cls, m: pb.Memory) -> MemoryInfo:
        return cls(
            m.memory_id,
            m.step,
            m.entries,
            m.tokens_written,
            m.pool_bytes,
            m.disk_bytes,
            m.create_time.ToDatetime(UTC),
            m.update_time.ToDatetime(UTC),
            m.model,
            RESIDENCY.get(m.residency, "unknown"),
            m.damage,
            m.long_term_tokens if m.HasField("long_term_tokens") else None,
        )


@dataclass(frozen=True)
class Entry:
    entry_id: int
    text: str
    source: str
    tokens: int
    chunks: int
    step: int
    created: datetime
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, e: pb.Entry) -> Entry:
        return cls(
            e.entry_id,
            e.text,
            e.source,
            e.tokens,
            e.chunks,
            e.step,
            e.create_time.ToDatetime(UTC),
            dict(e.metadata),
        )


@dataclass(frozen=True)
class ForgetResult:
    forgotten: int
    memory: MemoryInfo  # after the rebuild
    ms: float

    @classmethod
    def from_proto(cls, r: pb.ForgetResponse) -> ForgetResult:
        return cls(r.forgotten, MemoryInfo.from_proto(r.memory), r.ms)


@dataclass(frozen=True)
class Text:
    """A text to inject, with an optional source label and metadata."""

    text: str
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """A whole continuation (`complete`) and how it was made."""

    text: str
    usage: Usage


@dataclass(frozen=True)
class Answer:
    """`ask_with_usage`'s answer, how it was made, and whether the memory said it does not
    know (then `text` is exactly "I don't know.")."""

    text: str
    usage: Usage
    abstained: bool = False
