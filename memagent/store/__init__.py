"""Durable memories: a write-ahead log and snapshots per memory, tenants, residency."""

from memagent.store.errors import (
    CorruptState,
    EntryNotFound,
    InvalidName,
    MemoryExists,
    MemoryNotFound,
    ModelMismatch,
    StoreError,
)
from memagent.store.lease import LeaseLost
from memagent.store.quota import TenantQuota
from memagent.store.memory_store import ExportedState, Generation, MemoryInfo, MemoryStore, NewText, Receipt, check_name
from memagent.store.write_ahead_log import LogEntry

__all__ = [
    "CorruptState",
    "EntryNotFound",
    "ExportedState",
    "Generation",
    "InvalidName",
    "LeaseLost",
    "LogEntry",
    "MemoryExists",
    "MemoryInfo",
    "MemoryNotFound",
    "MemoryStore",
    "ModelMismatch",
    "NewText",
    "Receipt",
    "StoreError",
    "TenantQuota",
    "check_name",
]
