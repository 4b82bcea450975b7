"""One writer per memory on shared storage: a lease with a fencing number.

When several servers (Ray Serve replicas) share one data directory, routing sends a memory's
calls to one of them, but only on a best-effort basis: two can end up holding the same memory.
The lease makes that harmless. Two files in the memory's folder:

- `lease.lock`, never replaced: an exclusive `flock` on it orders every lease change and every
  change to the memory's files (log appends, log rewrites, snapshots, deletion);
- `lease`, replaced atomically (write, fsync, rename): `{"epoch": n, "holder": id, "owner": who}`.

Taking the lease, under the lock, writes epoch n + 1 with a new holder id; only then does the
taker read the log. Every change to the memory's files runs under the lock after checking that
`lease` still names its holder; a holder that lost the lease gets `LeaseLost` and changes
nothing. So an append acknowledged by the old holder is in the log before the new holder reads
it, and no append of the old holder lands after. Every call a server answers first checks that
it still holds the lease (one small read) and reloads the memory from storage if not, so no
server serves a pool older than another server's write.

There is no expiry: a lease is taken over, never waited for, so a dead holder blocks nothing
and no clock is trusted. The epoch only grows, which tells operators how often a memory moved.

Assumes a POSIX filesystem shared by all servers with `flock` that excludes across hosts
(local disks; NFSv4, where Linux maps `flock` onto NFS byte-range locks; CephFS; Lustre
mounted with `-o flock`; GPFS), atomic `rename`, and durable `fsync`. Object storage through
fsspec has no locks and no appends: it would need each log entry written as its own object with
a create-only condition (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), so that of two
writers of entry n exactly one succeeds, and the lease kept the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memagent.model.pool_file import write_atomically
from memagent.store.errors import MemoryNotFound, StoreError

LOCK_FILE = "lease.lock"
LEASE_FILE = "lease"


class LeaseLost(StoreError):
    """Another server took this memory over; this one changed nothing and dropped its copy."""


def default_owner() -> str:
    """Who holds a lease, for people reading the `lease` file: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Lease:
    folder: Path
    epoch: int
    holder: str  # new for every take, so a memory deleted and created again never matches

    @classmethod
    def take(cls, folder: Path, owner: str) -> Lease:
        """Become the memory's only writer; the previous holder's next change is refused."""
        with _locked(folder):
            try:
                current = _read(folder)
            except FileNotFoundError as err:  # deleted while we waited for the lock
                raise MemoryNotFound(f"memory {Path(folder).name!r} not found") from err
            lease = cls(Path(folder), (current.get("epoch", 0) if current else 0) + 1, uuid.uuid4().hex)
            record = {"epoch": lease.epoch, "holder": lease.holder, "owner": owner}
            write_atomically(lease.folder / LEASE_FILE, json.dumps(record).encode())
        return lease

    def held(self) -> bool:
        """Whether storage still names this lease (no lock: a change in flight is caught by `fenced`)."""
        try:
            current = _read(self.folder)
        except FileNotFoundError:  # the memory was deleted
            return False
        return current is not None and (current.get("epoch"), current.get("holder")) == (self.epoch, self.holder)

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Change the memory's files inside this block only while holding the lease."""
        try:
            with _locked(self.folder):
                if not self.held():
                    raise LeaseLost(f"memory {self.folder.name!r} was taken over by another server; retry")
                yield
        except MemoryNotFound as err:
            raise LeaseLost(f"memory {self.folder.name!r} was deleted by another server") from err


def read_lease(folder: Path) -> dict | None:
    """The `lease` record of a memory folder (epoch, holder, owner), or None if never taken."""
    return _read(Path(folder))


def _read(folder: Path) -> dict | None:
    if not folder.is_dir():
        raise FileNotFoundError(folder)
    try:
        return json.loads((folder / LEASE_FILE).read_bytes())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError as err:
        raise MemoryNotFound(f"memory {Path(folder).name!r} not found") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
