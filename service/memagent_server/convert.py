"""Between protobuf messages and the store's types: requests' sampling options in, results out."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from memagent.sampling import SamplingParams, Usage
from memagent.store import LogEntry, MemoryInfo, Receipt
from memagent.v1 import memagent_pb2 as pb

RESIDENCY = {"device": pb.RESIDENCY_DEVICE, "host": pb.RESIDENCY_HOST, "disk": pb.RESIDENCY_DISK}


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def memory(info: MemoryInfo) -> pb.Memory:
    return pb.Memory(
        memory_id=info.memory_id,
        step=info.step,
        entries=info.entries,
        tokens_written=info.tokens_written,
        pool_bytes=info.pool_bytes,
        disk_bytes=info.disk_bytes,
        create_time=timestamp(info.created),
        update_time=timestamp(info.updated),
        model=info.model,
        residency=RESIDENCY[info.residency],
        damage=info.damage,
        long_term_tokens=info.long_term_tokens,
    )


def receipt(r: Receipt) -> pb.Receipt:
    return pb.Receipt(entry_id=r.entry_id, tokens=r.tokens, chunks=r.chunks, step=r.step, ms=r.ms)


def entry(e: LogEntry) -> pb.Entry:
    return pb.Entry(
        entry_id=e.entry_id,
        text=e.text,
        source=e.source,
        metadata=e.metadata,
        tokens=e.tokens,
        chunks=len(e.chunks),
        step=e.step,
        create_time=timestamp(e.time),
    )


def sampling(options: pb.SamplingOptions, defaults: SamplingParams) -> SamplingParams:
    """The request's options over `defaults` (for its unset fields); raises ValueError if invalid."""
    present = {f.name: v for f, v in options.ListFields()}  # fields set, or non-zero where no presence
    return SamplingParams.of(defaults, **present)


def usage(u: Usage, ms: float) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=u.prompt_tokens,
        generated_tokens=u.completion_tokens,
        finish_reason=u.finish_reason,
        step=u.step,
        ms=ms,
    )
