"""What can go wrong in the memory store; the service maps each to a gRPC status."""

from __future__ import annotations

QUOTE_CHARS = 64


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` for an error message: repr'd, and cut to a short prefix (inputs can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class StoreError(Exception):
    """Base of the store's errors; the message is written for the caller."""


class InvalidName(StoreError, ValueError):
    """A memory id or tenant name that is not allowed (it would name a path on disk)."""


class MemoryNotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MemoryExists(StoreError):
    pass


class EntryNotFound(StoreError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class ModelMismatch(StoreError):
    """A memory (or imported state) was written by another model."""


class CorruptState(StoreError, ValueError):
    """Bytes that are not a readable log or pool (an import)."""


class MemoryDamaged(StoreError):
    """A memory whose files are damaged: it refuses reads and writes until `memagent repair`."""


class RequestIdReused(StoreError, ValueError):
    """A client request id sent again with different texts."""


class QuotaExceeded(StoreError):
    """A tenant at one of its limits (memories, bytes on disk); the message names the limit."""
