"""Errors to gRPC status codes, in one place: every handler answers with a code and a message."""

from __future__ import annotations

import functools
import inspect
import logging

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
from memagent_server.worker import QueueFull

log = logging.getLogger(__name__)

# Checked in order: the first matching class decides.
CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (MemoryNotFound, grpc.StatusCode.NOT_FOUND),
    (EntryNotFound, grpc.StatusCode.NOT_FOUND),
    (MemoryExists, grpc.StatusCode.ALREADY_EXISTS),
    (ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (LeaseLost, grpc.StatusCode.ABORTED),  # another replica took the memory over: retry
    (InvalidName, grpc.StatusCode.INVALID_ARGUMENT),
    (CorruptState, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
]


def _status(err: Exception) -> tuple[grpc.StatusCode, str]:
    for kind, code in CODES:
        if isinstance(err, kind):
            return code, str(err)
    log.exception("internal error")
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"


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
