"""Snapshots of a memory's pool, so that opening it replays only the log's tail.

A snapshot is named after the log it belongs to (`pool-<log_id>.safetensors`): rewriting a log
(reset, forget, import) gives it a new id, so a snapshot of an older log can never be mistaken
for the current one, whatever order a crash left the files in.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from memagent.model.memory_pool import MemoryPool
from memagent.model.pool_file import PoolFileError, load_pool, save_pool

log = logging.getLogger(__name__)


class Snapshots:
    def __init__(self, folder: Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def path(self, log_id: str) -> Path:
        return self.folder / f"pool-{log_id}.safetensors"

    def save(self, pool: MemoryPool, log_id: str) -> None:
        save_pool(pool, self.path(log_id), self.fingerprint)
        self.remove_stale(log_id)

    def load(self, log_id: str, *, device: torch.device, dtype: torch.dtype) -> MemoryPool | None:
        """The latest snapshot of log `log_id`, or None (none yet, or unreadable: replay the log)."""
        path = self.path(log_id)
        if not path.exists():
            return None
        try:
            return load_pool(path, self.fingerprint, device=device, dtype=dtype)
        except PoolFileError as err:
            log.warning("snapshot ignored; replaying the whole log", extra={"path": str(path), "error": str(err)})
            return None

    def remove_stale(self, log_id: str) -> None:
        keep = self.path(log_id)
        for path in self.folder.glob("pool-*.safetensors"):
            if path != keep:
                path.unlink(missing_ok=True)

    def nbytes(self, log_id: str) -> int:
        path = self.path(log_id)
        return path.stat().st_size if path.exists() else 0
