"""What one tenant may hold, so that one tenant cannot fill the server for the others."""

from __future__ import annotations

from dataclasses import dataclass

from memagent.store.errors import QuotaExceeded


@dataclass(frozen=True)
class TenantQuota:
    """Limits per tenant; None: no limit. Deleting, forgetting and resetting are always allowed:
    they are how a tenant at its limit makes room."""

    max_memories: int | None = None
    max_disk_bytes: int | None = None

    def check_memories(self, tenant: str, held: int) -> None:
        if self.max_memories is not None and held >= self.max_memories:
            raise QuotaExceeded(
                f"tenant {tenant!r} has {held} memories; the limit is max_memories_per_tenant={self.max_memories}"
            )

    def check_disk(self, tenant: str, used: int, adding: int) -> None:
        if self.max_disk_bytes is not None and used + adding > self.max_disk_bytes:
            raise QuotaExceeded(
                f"tenant {tenant!r} holds {used} bytes on disk and this call adds about {adding}; "
                f"the limit is max_disk_bytes_per_tenant={self.max_disk_bytes}"
            )
