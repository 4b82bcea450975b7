"""Errors to gRPC status codes, in one place: every handler answers with a code and a message.

Messages are for the caller: capped in length, and an unexpected error says only that it
happened and the reference under which the server logged it (never a server path or trace).
A full or failing disk is a status of its own: such a call was not applied (the store takes
back a write whose log append failed), so the caller may retry it.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import uuid

import grpc

from memagent.store import (
    CorruptState,
    EntryNotFound,
    InvalidName,
    LeaseLost,
    MemoryExists,
    MemoryNotFound,
    ModelMismatch,
)
from memagent.engine import CacheBudgetExceeded
from memagent.store.errors import MemoryDamaged, QuotaExceeded
from memagent_server.worker import DeadlinePassed, QueueFull

log = logging.getLogger(__name__)

MAX_DETAILS_CHARS = 2000
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}

# Checked in order: the first matching class decides.
CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (MemoryNotFound, grpc.StatusCode.NOT_FOUND),
    (EntryNotFound, grpc.StatusCode.NOT_FOUND),
    (MemoryExists, grpc.StatusCode.ALREADY_EXISTS),
    (ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (MemoryDamaged, grpc.StatusCode.FAILED_PRECONDITION),
    (LeaseLost, grpc.StatusCode.ABORTED),  # another replica took the memory over: retry
    (InvalidName, grpc.StatusCode.INVALID_ARGUMENT),
    (CorruptState, grpc.StatusCode.INVALID_ARGUMENT),
    (DeadlinePassed, grpc.StatusCode.DEADLINE_EXCEEDED),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CacheBudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
]


def _status(err: Exception) -> tuple[grpc.StatusCode, str]:
    for kind, code in CODES:
        if isinstance(err, kind):
            return code, _capped(str(err))
    if isinstance(err, OSError):
        log.error("storage error", extra={"error": str(err), "errno": err.errno})
        if err.errno in DISK_FULL:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "the server's disk is full; the call was not applied"
        name = errno.errorcode.get(err.errno, "unknown") if err.errno else "unknown"
        return grpc.StatusCode.UNAVAILABLE, f"storage error ({name}) on the server; the call was not applied"
    reference = uuid.uuid4().hex[:12]
    log.exception("internal error", extra={"reference": reference})
    return grpc.StatusCode.INTERNAL, f"internal error ({type(err).__name__}); the server logged it as {reference}"


def _capped(message: str) -> str:
    return message if len(message) <= MAX_DETAILS_CHARS else message[:MAX_DETAILS_CHARS] + "..."


def answers_with_status(method):
    """Turn the exceptions a handler raises into an aborted call with the matching status."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self, request, context):
            try:
                async for response in method(self, request, context):
                    yield response
            except (grpc.aio.AbortError, grpc.aio.UsageError):
                raise
            except Exception as err:  # noqa: BLE001 -- every error becomes a status; _status logs unknown ones
                await context.abort(*_status(err))

        return streaming

    @functools.wraps(method)
    async def unary(self, request, context):
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise
        except Exception as err:  # noqa: BLE001 -- as above
            await context.abort(*_status(err))

    return unary
