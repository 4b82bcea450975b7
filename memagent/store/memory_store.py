"""Durable, isolated memories for many tenants, on one engine.

On disk, each memory is a folder `<data_dir>/<tenant>/<memory_id>/` holding its write-ahead
log (`log.wal`) and the latest snapshot of its pool. A write is appended to the log and fsynced
before it is applied to the pool, so everything a caller was told is written survives a crash:
opening a memory loads its snapshot and replays the log's tail, deterministically.

Memories are created, forked and imported in a hidden folder that is renamed into place once
complete, and deleted by renaming them out of sight first, so a crash never leaves half of one.
Folders are created owner-only (0700); files are written 0600.

A memory whose log is damaged, missing or unreadable (see write_ahead_log.py) stays listed, says
so in its info, and refuses every call but `get`, `list` and `delete` with MemoryDamaged until
`memagent repair`.
Writes are all-or-nothing: the log records of one `inject` go to disk in one append, and once
they are there the write is applied and acknowledged even if the snapshot after it fails (the
log replays it). A write with a request id that the log already holds is answered with the
receipts it got the first time and not applied again.

Every call that runs forward passes (a write, a forget's rebuild, an import's or a reopened
memory's replay, a read's start) also comes as a step generator (`inject_steps`, ...): one
forward pass per step, its result the generator's return value. A server drives them a step
at a time, so other memories' work runs in between; the plain calls drive them to the end.

The store is not thread-safe. The service drives it from a single worker thread, and runs the
calls on one memory one at a time, in the order they arrived (steps of calls on other
memories interleave), so no read sees a half-done write.

With `shared=True` several stores (one per server) share the data directory: each memory is
found on storage when asked for, every call first makes sure this store holds the memory's
lease (taking it over and reloading the memory from storage if not; `lease.py`), and every
change to a memory's files is fenced by that lease.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from memagent import engine as engine_module
from memagent.engine import Engine
from memagent.model.memory_pool import MemoryPool
from memagent.model.pool_file import PoolFileError, pool_to_bytes
from memagent.sampling import SamplingParams, Usage
from memagent.store.errors import (
    CorruptState,
    EntryNotFound,
    InvalidName,
    MemoryDamaged,
    MemoryExists,
    MemoryNotFound,
    ModelMismatch,
    RequestIdReused,
    quote,
)
from memagent.store.lease import Lease, LeaseLost, default_owner
from memagent.store.quota import TenantQuota
from memagent.store.residency import Residency
from memagent.store.snapshots import Snapshots
from memagent.store.write_ahead_log import (
    LOG_FILE,
    LogEntry,
    LogHeader,
    WriteAheadLog,
    decode_complete,
    encoded_size,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Steps = Generator[None, None, T]  # one forward pass per step; the call's result once it ends

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PRIVATE = 0o700  # memory folders: their texts are the tenant's
STATE_FORMAT = "memagent.state/1"


def check_name(kind: str, name: str) -> str:
    """`name` if it is a safe memory id or tenant name (it becomes a folder name), else InvalidName."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidName(
            f"invalid {kind} {quote(name)}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class NewText:
    text: str
    source: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Receipt:
    entry_id: int
    tokens: int  # tokens of the text
    chunks: int  # writes it took
    step: int  # the pool's write count after it
    ms: float


@dataclass(frozen=True)
class MemoryInfo:
    memory_id: str
    step: int
    entries: int
    tokens_written: int
    pool_bytes: int
    disk_bytes: int
    created: float
    updated: float
    model: str
    residency: str  # "device", "host" or "disk"
    damage: str = ""  # why the memory refuses calls until repaired; empty when it is sound
    # M+: long-term tokens in the fullest layer (0 without long-term memory); None until known
    # (a memory not opened since the server started and without a snapshot of its whole log).
    long_term_tokens: int | None = 0


@dataclass(frozen=True)
class ExportedState:
    memory_id: str
    format: str
    fingerprint: str
    step: int
    entries: int
    log: bytes
    pool: bytes


class DurablePool:
    """One memory's files and, while it is open, its pool."""

    def __init__(self, key: tuple[str, str], folder: Path, wal: WriteAheadLog, snapshots: Snapshots):
        self.key = key
        self.folder = folder
        self.wal = wal
        self.snapshots = snapshots
        self.pool: MemoryPool | None = None
        self.unsnapshotted = 0  # entries applied to the pool since its last snapshot
        self.applying = False  # between the steps of a write: the pool lags the log, never snapshot it
        self.long_term_size: int | None = None  # as of the pool this store last held complete
        self.lease: Lease | None = None  # held on shared storage only

    @property
    def memory_id(self) -> str:
        return self.key[1]

    def damaged(self) -> MemoryDamaged | None:
        if self.wal.damage is None:
            return None
        return MemoryDamaged(
            f"memory {self.memory_id!r} is damaged: {self.wal.damage}; an operator must run "
            f"`memagent repair {self.memory_id} --tenant {self.key[0]}` with the server stopped"
        )


class Generation:
    """One read's text pieces as they are decoded (maybe empty); closing it stops decoding.

    Nothing runs until the first step, which looks the memory up. The first steps make the
    pool ready (one empty piece per chunk a reopened memory replays); then the engine's
    generation starts, with the pool on the device for its prefill. `started` turns true once
    its first step ran: from then on the read no longer looks at the pool, so writes to the
    memory may run between its steps. `usage` is None until the last piece was handed out,
    then the engine's: `finished` says so, before the step that would only end the iteration.
    """

    def __init__(
        self, ready: Callable[[], Steps[MemoryPool]], start: Callable[[MemoryPool], engine_module.TextPieces]
    ):
        self.started = False
        self._generation: engine_module.TextPieces | None = None
        self._steps = self._run(ready, start)

    @property
    def usage(self) -> Usage | None:
        return self._generation.usage if self._generation is not None else None

    @property
    def finished(self) -> bool:
        return self.usage is not None

    def __iter__(self) -> Iterator[str]:
        return self._steps

    def __next__(self) -> str:
        return next(self._steps)

    def close(self) -> None:
        self._steps.close()

    def _run(
        self, ready: Callable[[], Steps[MemoryPool]], start: Callable[[MemoryPool], engine_module.TextPieces]
    ) -> Iterator[str]:
        pool = yield from _as_pieces(ready())
        self._generation = start(pool)
        with contextlib.closing(self._generation):
            for piece in self._generation:
                self.started = True
                yield piece


class MemoryStore:
    def __init__(
        self,
        engine: Engine,
        data_dir: str | Path,
        *,
        snapshot_every: int = 64,
        replay_seconds: float = 2.0,
        device_bytes: int | None = None,
        host_bytes: int | None = None,
        seed: int = 0,
        shared: bool = False,
        owner: str | None = None,
        quota: TenantQuota = TenantQuota(),
    ):
        """`shared`: other stores use `data_dir` too (memories are leased; see the module doc);
        `owner` names this store in the lease files (default: host and process id); `quota`:
        what each tenant may hold (QuotaExceeded beyond it); `snapshot_every` and
        `replay_seconds` bound the log tail a reopened memory replays (see `_worth_snapshot`)."""
        self.engine = engine
        self.root = Path(data_dir)
        self.root.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
        self.snapshot_every = snapshot_every
        self.replay_seconds = replay_seconds
        self._seconds_per_write = 0.0  # measured on this engine, a moving average
        self.seed = seed
        self.fingerprint = engine.fingerprint()
        self.pool_bytes = engine.pool_nbytes
        self.residency = Residency(engine.device, self._evict, device_bytes=device_bytes, host_bytes=host_bytes)
        self.tenants: dict[str, dict[str, DurablePool]] = {}
        self.shared = shared
        self.owner = owner or default_owner()
        self.quota = quota
        if not shared:  # shared storage: memories are found when asked for; leftovers may be another store's work
            self._recover()

    # -- opening the data directory --------------------------------------------------------

    def _recover(self) -> None:
        """Find every memory; finish or undo what a crash interrupted; cut torn log tails; mark
        damaged logs (kept, listed, refusing calls until repaired)."""
        for tenant_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not NAME.fullmatch(tenant_dir.name):
                continue
            for folder in sorted(tenant_dir.iterdir()):
                if folder.name.startswith("."):  # a create, fork, import or delete cut short
                    _remove(folder)
                    continue
                if not folder.is_dir() or not NAME.fullmatch(folder.name):
                    continue
                for leftover in folder.glob(".*.tmp"):  # an atomic write cut short
                    leftover.unlink()
                try:
                    wal = WriteAheadLog.open(folder / LOG_FILE, self._placeholder())
                except OSError as err:  # a visible memory folder is always complete: its log was lost
                    wal = WriteAheadLog.unreadable(folder / LOG_FILE, self._placeholder(), err)
                key = (tenant_dir.name, folder.name)
                self.tenants.setdefault(key[0], {})[key[1]] = DurablePool(
                    key, folder, wal, Snapshots(folder, self.fingerprint)
                )

    # -- memories --------------------------------------------------------------------------

    def create(self, tenant: str, memory_id: str) -> MemoryInfo:
        key = self._new_key(tenant, memory_id)
        header = LogHeader.new(seed=self.seed, fingerprint=self.fingerprint, model=self.engine.name)
        return self.info(self._materialize(key, header, [], pool=None))

    def get(self, tenant: str, memory_id: str) -> MemoryInfo:
        return self.info(self._memory(tenant, memory_id, damaged_too=True))

    def list(self, tenant: str, *, after: str = "", limit: int | None = None) -> list[MemoryInfo]:
        """The tenant's memories in id order, starting after the id `after`."""
        memories = self._tenant_memories(tenant)
        names = sorted(n for n in memories if n > after)
        return [self.info(memories[n]) for n in names[:limit]]

    def delete(self, tenant: str, memory_id: str) -> None:
        memory = self._memory(tenant, memory_id, damaged_too=True)
        self.residency.discard(memory.key)
        del self.tenants[tenant][memory_id]
        trash = memory.folder.with_name(f".deleted-{memory_id}-{uuid.uuid4().hex}")
        with self._fenced(memory):
            os.replace(memory.folder, trash)
        _fsync_folder(trash.parent)
        shutil.rmtree(trash)

    def reset(self, tenant: str, memory_id: str) -> MemoryInfo:
        memory = self._memory(tenant, memory_id)
        self._rewrite(memory, [], self.engine.new_pool(seed=memory.wal.header.seed))
        return self.info(memory)

    def fork(self, tenant: str, memory_id: str, new_memory_id: str) -> MemoryInfo:
        return run_to_end(self.fork_steps(tenant, memory_id, new_memory_id))

    def fork_steps(self, tenant: str, memory_id: str, new_memory_id: str) -> Steps[MemoryInfo]:
        source = self._memory(tenant, memory_id)
        key = self._new_key(tenant, new_memory_id, adding=_disk_bytes(source))
        pool = yield from self._ready(source)
        header = replace(source.wal.header.rewrite(source.wal.next_entry_id), created=time.time())
        return self.info(self._materialize(key, header, list(source.wal.entries), pool))

    def export(self, tenant: str, memory_id: str) -> ExportedState:
        return run_to_end(self.export_steps(tenant, memory_id))

    def export_steps(self, tenant: str, memory_id: str) -> Steps[ExportedState]:
        memory = self._memory(tenant, memory_id)
        pool = yield from self._ready(memory)
        wal = memory.wal
        return ExportedState(
            memory_id,
            STATE_FORMAT,
            self.fingerprint,
            wal.step,
            len(wal.entries),
            wal.to_bytes(),
            pool_to_bytes(pool, self.fingerprint),
        )

    def import_state(self, tenant: str, memory_id: str, log_bytes: bytes, pool_bytes: bytes | None) -> MemoryInfo:
        """A new memory from an export: its log, and its pool (replayed from the log when absent)."""
        return run_to_end(self.import_steps(tenant, memory_id, log_bytes, pool_bytes))

    def import_steps(
        self, tenant: str, memory_id: str, log_bytes: bytes, pool_bytes: bytes | None
    ) -> Steps[MemoryInfo]:
        key = self._new_key(tenant, memory_id, adding=len(log_bytes) + len(pool_bytes or b""))
        try:
            header, entries = decode_complete(log_bytes)
        except CorruptState as err:
            raise CorruptState(f"imported log: {err}") from err
        if header.fingerprint != self.fingerprint:
            raise ModelMismatch(
                f"the imported memory was written by model {quote(header.fingerprint)} ({quote(header.model)}); "
                f"this server runs {self.fingerprint} ({self.engine.name})"
            )
        _check_steps(entries)
        self._check_tokens(entries)
        header = header.rewrite(max(header.next_entry_id, entries[-1].entry_id + 1 if entries else 1))
        if pool_bytes:
            pool = self._pool_from_bytes(pool_bytes, key)
            log_step = entries[-1].step if entries else 0
            if pool.step != log_step:
                raise CorruptState(f"imported pool is at step {pool.step} but its log ends at step {log_step}")
        else:
            pool = self.engine.new_pool(seed=header.seed)
            yield from self._replay(pool, entries)
        return self.info(self._materialize(key, header, entries, pool))

    def info(self, memory: DurablePool) -> MemoryInfo:
        wal = memory.wal
        updated = max([wal.header.rewritten] + [e.time for e in wal.entries[-1:]])
        disk = _disk_bytes(memory)
        return MemoryInfo(
            memory.memory_id,
            wal.step,
            len(wal.entries),
            sum(e.tokens for e in wal.entries),
            self.pool_bytes,
            disk,
            wal.header.created,
            updated,
            wal.header.model,
            self.residency.tier(memory.key),
            str(wal.damage or ""),
            self._long_term_size(memory),
        )

    def _long_term_size(self, memory: DurablePool) -> int | None:
        if self.engine.model.config.long_term is None:
            return 0
        if memory.pool is not None:
            memory.long_term_size = memory.pool.long_term.size
        elif memory.wal.step == 0:  # nothing written
            return 0
        elif memory.long_term_size is None:
            memory.long_term_size = memory.snapshots.long_term_size(memory.wal.header.log_id, memory.wal.step)
        return memory.long_term_size

    # -- writing and forgetting ------------------------------------------------------------

    def inject(
        self, tenant: str, memory_id: str, texts: Sequence[NewText], *, request_id: str = ""
    ) -> list[Receipt]:
        """Write `texts` in order: all are checked, then logged in one fsynced append, then applied.

        `request_id` (optional, the client's) makes the call idempotent: sent again, it gets the
        receipts of the first time and writes nothing."""
        return run_to_end(self.inject_steps(tenant, memory_id, texts, request_id=request_id))

    def inject_steps(
        self, tenant: str, memory_id: str, texts: Sequence[NewText], *, request_id: str = ""
    ) -> Steps[list[Receipt]]:
        """`inject`, one chunk per step. Closed before its log append, it wrote nothing; after,
        its entries are durable: it stops applying them and drops the pool, and the memory's
        next use replays them from the log."""
        memory = self._memory(tenant, memory_id)
        if request_id and request_id in memory.wal.by_request:
            return _receipts_again(memory.wal.by_request[request_id], texts, request_id)
        plans = [self.engine.plan_write(t.text) for t in texts]
        pool = yield from self._ready(memory)
        entries, step, entry_id, now = [], pool.step, memory.wal.next_entry_id, time.time()
        for text, plan in zip(texts, plans):
            step += len(plan.chunks)
            entries.append(
                LogEntry(
                    entry_id,
                    text.text,
                    text.source,
                    plan.chunks,
                    plan.tokens,
                    step,
                    now,
                    dict(text.metadata),
                    request_id,
                )
            )
            entry_id += 1
        self.quota.check_disk(tenant, self._tenant_disk_bytes(tenant), encoded_size(entries))
        with self._fenced(memory):
            memory.wal.append(entries)
        receipts = []
        memory.applying = True
        try:
            for entry in entries:
                seconds = 0.0
                for chunk in entry.chunks:
                    if memory.pool is not pool:  # evicted meanwhile: its next use replays the log
                        break
                    seconds += self._apply(self.residency.use(memory.key, pool), chunk)
                    yield
                else:  # written whole: its time prices replays
                    self._measured(seconds)
                receipts.append(Receipt(entry.entry_id, entry.tokens, len(entry.chunks), entry.step, seconds * 1000))
        except BaseException:  # an error, or closed between steps (cancelled)
            self._close_pool(memory)  # the entries are logged: the next use replays them
            raise
        finally:
            memory.applying = False
        if memory.pool is pool:
            self.engine.refresh_reads(pool)
            memory.unsnapshotted += len(entries)
            if self._snapshot_due(memory):
                self._try_snapshot(memory)
        return receipts

    def entries(self, tenant: str, memory_id: str) -> list[LogEntry]:
        """The memory's entries (refused while it is damaged: the list would be incomplete)."""
        return list(self._memory(tenant, memory_id).wal.entries)

    def forget(self, tenant: str, memory_id: str, entry_ids: Sequence[int]) -> MemoryInfo:
        """Remove entries (all must exist) from the log and rebuild the pool from the rest.

        A latent pool cannot unlearn one fact, so the pool is rebuilt from scratch: the result is
        the pool a memory would have had if it had never been told the forgotten entries.
        """
        return run_to_end(self.forget_steps(tenant, memory_id, entry_ids))

    def forget_steps(self, tenant: str, memory_id: str, entry_ids: Sequence[int]) -> Steps[MemoryInfo]:
        """`forget`, one chunk of the rebuild per step; the log is rewritten after the last, so
        closed before, it changed nothing."""
        memory = self._memory(tenant, memory_id)
        doomed = set(entry_ids)
        if not doomed:
            raise ValueError("no entry ids given")
        missing = doomed - {e.entry_id for e in memory.wal.entries}
        if missing:
            raise EntryNotFound(f"memory {memory_id!r} has no entries {quote(sorted(missing))}")
        pool = self.engine.new_pool(seed=memory.wal.header.seed)
        kept = yield from self._replay(pool, [e for e in memory.wal.entries if e.entry_id not in doomed])
        self._rewrite(memory, kept, pool)
        return self.info(memory)

    # -- reading ---------------------------------------------------------------------------

    def generate(self, tenant: str, memory_id: str, prompt: str, params: SamplingParams | None = None) -> Generation:
        """The continuation of `prompt`; its first step raises what looking the memory up raises."""
        params = params or SamplingParams()
        return self._read(tenant, memory_id, lambda pool: self.engine.generate(pool, prompt, params))

    def _read(self, tenant: str, memory_id: str, start: Callable[[MemoryPool], engine_module.TextPieces]) -> Generation:
        """A read of the memory, started by `start` once its pool is ready."""
        return Generation(lambda: self._ready(self._memory(tenant, memory_id)), start)

    def chat(
        self, tenant: str, memory_id: str, messages: Sequence[Mapping[str, str]], params: SamplingParams | None = None
    ) -> Generation:
        return self.generate(tenant, memory_id, self.engine.chat_prompt([dict(m) for m in messages]), params)

    def ask(
        self, tenant: str, memory_id: str, question: str, params: SamplingParams | None = None, grounded: bool = False
    ) -> Generation:
        """Like `NamedPool.ask`: a short answer (`SamplingParams.for_ask`), or "I don't know."."""
        return self._read(tenant, memory_id, lambda pool: self.engine.answer(pool, question, params, grounded=grounded))

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Snapshot every pool whose log tail would cost more to replay than a snapshot to load."""
        for memories in self.tenants.values():
            for memory in memories.values():
                if memory.pool is not None and self._snapshot_due(memory):
                    self._try_snapshot(memory)

    def held(self) -> set[str]:
        """Shared storage: the ids of the memories (of any tenant) whose lease this store holds."""
        return {m.memory_id for ms in self.tenants.values() for m in ms.values() if m.lease and m.lease.held()}

    def resident(self) -> dict[str, int]:
        """How many pools are on the device and in host memory."""
        return self.residency.counts()

    # -- inside ----------------------------------------------------------------------------

    def _placeholder(self) -> LogHeader:
        """Stands in for a log header that cannot be read (the memory is then damaged)."""
        return LogHeader("", self.seed, "", "unknown (log header unreadable)", 0.0, 0.0)

    def _memory(self, tenant: str, memory_id: str, *, damaged_too: bool = False) -> DurablePool:
        check_name("memory id", memory_id)
        memory = self._hold(tenant, memory_id) if self.shared else self.tenants.get(tenant, {}).get(memory_id)
        if memory is None:
            raise MemoryNotFound(f"memory {memory_id!r} not found")
        if not damaged_too and (damage := memory.damaged()) is not None:
            raise damage
        return memory

    def _new_key(self, tenant: str, memory_id: str, adding: int = 0) -> tuple[str, str]:
        """The key of a new memory of `tenant` taking about `adding` bytes on disk, if free and within its quota."""
        check_name("tenant", tenant)
        check_name("memory id", memory_id)
        memories = self._tenant_memories(tenant)
        if memory_id in memories or (self.shared and (self.root / tenant / memory_id).exists()):
            raise MemoryExists(f"memory {memory_id!r} already exists")
        self.quota.check_memories(tenant, len(memories))
        self.quota.check_disk(tenant, self._tenant_disk_bytes(tenant), adding)
        return tenant, memory_id

    def _tenant_memories(self, tenant: str) -> Mapping[str, DurablePool]:
        return self._on_storage(tenant) if self.shared else self.tenants.get(tenant, {})

    def _tenant_disk_bytes(self, tenant: str) -> int:
        if self.quota.max_disk_bytes is None:
            return 0  # not counted when not limited: it reads every memory's file sizes
        return sum(_disk_bytes(m) for m in self._tenant_memories(tenant).values())

    def _check_tokens(self, entries: Sequence[LogEntry]) -> None:
        """Imported entries must be writes this engine could have made."""
        vocab = self.engine.model.config.vocab_size
        longest = self.engine.chunking.max_chunk_tokens + self.engine.chunking.min_write_tokens
        for entry in entries:
            for chunk in entry.chunks:
                if len(chunk) > longest:
                    raise CorruptState(
                        f"log entry {entry.entry_id} has a write of {len(chunk)} tokens (at most {longest})"
                    )
                if max(chunk) >= vocab:
                    raise CorruptState(
                        f"log entry {entry.entry_id} has token id {max(chunk)}; this model's vocabulary has {vocab}"
                    )

    def _ready(self, memory: DurablePool) -> Steps[MemoryPool]:
        """The memory's pool, on the device: loaded (snapshot + log tail, a chunk per step) if it was on disk."""
        if memory.pool is None:
            memory.pool = yield from self._load(memory)
        return self.residency.use(memory.key, memory.pool)

    def _load(self, memory: DurablePool) -> Steps[MemoryPool]:
        header, entries = memory.wal.header, memory.wal.entries
        if header.fingerprint != self.fingerprint:
            raise ModelMismatch(
                f"memory {memory.memory_id!r} was written by model {header.fingerprint} ({header.model}); "
                f"this server runs {self.fingerprint} ({self.engine.name})"
            )
        pool = memory.snapshots.load(header.log_id, entries, device=self.engine.device, dtype=self.engine.dtype)
        pool = self.engine.adopt(pool) if pool else self.engine.new_pool(seed=header.seed)
        tail = [e for e in entries if e.step > pool.step]
        yield from self._replay(pool, tail)
        memory.unsnapshotted = len(tail)
        return pool

    def _replay(self, pool: MemoryPool, entries: Sequence[LogEntry]) -> Steps[list[LogEntry]]:
        """Apply logged entries' chunks to `pool`, one per step; returns them with the steps they now end at."""
        replayed = []
        for entry in entries:
            seconds = 0.0
            for chunk in entry.chunks:
                seconds += self._apply(pool, chunk)
                yield
            self._measured(seconds)
            replayed.append(replace(entry, step=pool.step))
        return replayed

    def _snapshot(self, memory: DurablePool) -> None:
        wal = memory.wal
        try:
            with self._fenced(memory):
                memory.snapshots.save(memory.pool, wal.header, wal.entries[-1].entry_id if wal.entries else 0)
        except LeaseLost:  # the pool is stale; the new holder snapshots its own
            return
        memory.unsnapshotted = 0

    def _apply(self, pool: MemoryPool, chunk: Sequence[int]) -> float:
        """Write one chunk (one forward pass) into `pool`; the seconds it took."""
        start = time.perf_counter()
        self.engine.apply(pool, [chunk])
        return time.perf_counter() - start

    def _measured(self, seconds: float) -> None:
        """One entry's write time, into the moving average that prices a log tail's replay."""
        weight = 0.1 if self._seconds_per_write else 1.0  # the first measurement sets it
        self._seconds_per_write += weight * (seconds - self._seconds_per_write)

    def _worth_snapshot(self, tail: int) -> bool:
        """A snapshot is a shortcut, not the record: worth its disk once the log's tail it saves
        replaying is `snapshot_every` writes long or would take over `replay_seconds` to replay
        at this engine's measured write speed. A short, fast log replays quickly and exactly, so
        a memory holding a few sentences costs about its log, not a pool's worth of disk."""
        return tail >= self.snapshot_every or (tail > 0 and tail * self._seconds_per_write > self.replay_seconds)

    def _snapshot_due(self, memory: DurablePool) -> bool:
        return not memory.applying and self._worth_snapshot(memory.unsnapshotted)

    def _try_snapshot(self, memory: DurablePool) -> None:
        """Snapshot after the log already holds everything: a failure (disk full) costs only a
        longer replay later, so it is logged, never reported as a failed write."""
        try:
            self._snapshot(memory)
        except OSError as err:
            log.warning(
                "snapshot failed; the log still holds every write",
                extra={"memory": memory.memory_id, "error": str(err)},
            )

    def _rewrite(self, memory: DurablePool, entries: list[LogEntry], pool: MemoryPool) -> None:
        """Replace the memory's log and pool (reset, forget). The new log gets a new id, so the
        old snapshot no longer counts even if a crash comes before the new one is written."""
        header = memory.wal.header.rewrite(memory.wal.next_entry_id)
        try:
            with self._fenced(memory):
                memory.wal = WriteAheadLog.create(memory.wal.path, header, entries)
        except OSError:
            # The new log may be in place already (only the folder's fsync failed): believe the disk.
            self._close_pool(memory)
            memory.wal = WriteAheadLog.open(memory.wal.path, memory.wal.header)
            raise
        memory.snapshots.remove_stale(header.log_id)  # the old log's snapshot no longer counts
        memory.pool = pool
        memory.unsnapshotted = len(entries)
        self.residency.use(memory.key, pool)
        if self._snapshot_due(memory):
            self._try_snapshot(memory)

    def _materialize(
        self, key: tuple[str, str], header: LogHeader, entries: list[LogEntry], pool: MemoryPool | None
    ) -> DurablePool:
        """Write a complete memory folder out of sight, then rename it into place."""
        tenant_dir = self.root / key[0]
        tenant_dir.mkdir(mode=PRIVATE, exist_ok=True)
        folder = tenant_dir / key[1]
        staging = tenant_dir / f".new-{key[1]}-{uuid.uuid4().hex}"
        staging.mkdir(mode=PRIVATE)
        try:
            WriteAheadLog.create(staging / LOG_FILE, header, entries)
            if pool is not None and self._worth_snapshot(len(entries)):
                Snapshots(staging, self.fingerprint).save(pool, header, entries[-1].entry_id if entries else 0)
            os.rename(staging, folder)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise MemoryExists(f"memory {key[1]!r} already exists on disk (unreadable; see the server log)") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _fsync_folder(tenant_dir)
        memory = DurablePool(
            key, folder, WriteAheadLog(folder / LOG_FILE, header, entries), Snapshots(folder, self.fingerprint)
        )
        if self.shared:  # its creator is its first writer
            memory.lease = Lease.take(folder, self.owner)
        self.tenants.setdefault(key[0], {})[key[1]] = memory
        return memory

    def _pool_from_bytes(self, data: bytes, key: tuple[str, str]) -> MemoryPool:
        scratch = self.root / key[0] / f".import-{uuid.uuid4().hex}.safetensors"
        scratch.parent.mkdir(mode=PRIVATE, exist_ok=True)
        try:
            scratch.write_bytes(data)
            pool = self.engine.load_pool(scratch)
        except PoolFileError as err:
            raise CorruptState(f"imported pool: {err}".replace(str(scratch), "pool")) from err
        finally:
            scratch.unlink(missing_ok=True)
        expected = tuple(self.engine.model.pool.memory.shape)
        if tuple(pool.memory.shape) != expected:
            raise CorruptState(f"imported pool has shape {tuple(pool.memory.shape)}; this model's pools are {expected}")
        return pool

    # -- shared storage (lease.py) ---------------------------------------------------------

    def _hold(self, tenant: str, memory_id: str) -> DurablePool:
        """The memory as storage has it, with this store holding its lease: kept if the lease
        still holds, else taken over and read again from storage (dropping any stale pool)."""
        memory = self.tenants.get(tenant, {}).get(memory_id)
        if memory is not None and memory.lease is not None and memory.lease.held():
            return memory
        if memory is not None:
            self._close_pool(memory)
            del self.tenants[tenant][memory_id]
        folder = self.root / tenant / memory_id
        if not (folder / LOG_FILE).is_file():
            raise MemoryNotFound(f"memory {memory_id!r} not found")
        lease = Lease.take(folder, self.owner)
        # Only the lease holder appends, so a torn tail here is a crashed writer's and may be cut.
        wal = WriteAheadLog.open(folder / LOG_FILE, self._placeholder())
        memory = DurablePool((tenant, memory_id), folder, wal, Snapshots(folder, self.fingerprint))
        memory.lease = lease
        self.tenants.setdefault(tenant, {})[memory_id] = memory
        return memory

    def _on_storage(self, tenant: str) -> dict[str, DurablePool]:
        """Every memory of `tenant` on storage: ours as held, the others read without their lease."""
        found = {}
        tenant_dir = self.root / tenant
        for folder in sorted(tenant_dir.iterdir()) if tenant_dir.is_dir() else ():
            if not NAME.fullmatch(folder.name):  # a create or delete in progress
                continue
            held = self.tenants.get(tenant, {}).get(folder.name)
            if held is not None and held.lease is not None and held.lease.held():
                found[folder.name] = held
                continue
            try:
                wal = WriteAheadLog.read(folder / LOG_FILE, self._placeholder())
            except OSError:  # not a memory, or deleted meanwhile
                continue
            found[folder.name] = DurablePool((tenant, folder.name), folder, wal, Snapshots(folder, self.fingerprint))
        return found

    @contextlib.contextmanager
    def _fenced(self, memory: DurablePool) -> Iterator[None]:
        """Change the memory's files only while holding its lease (shared storage); a store that
        lost it drops its pool and changes nothing."""
        if memory.lease is None:
            yield
            return
        try:
            with memory.lease.fenced():
                yield
        except LeaseLost:
            self._close_pool(memory)
            raise

    def _close_pool(self, memory: DurablePool) -> None:
        self.residency.discard(memory.key)
        memory.pool = None
        memory.long_term_size = None  # the pool may have missed logged writes

    def _evict(self, key: tuple[str, str]) -> None:
        memory = self.tenants.get(key[0], {}).get(key[1])
        if memory is not None and memory.pool is not None:
            if self._snapshot_due(memory):
                self._try_snapshot(memory)
            lags = memory.applying or memory.pool.long_term is None  # mid-write, a pool lags its log
            memory.long_term_size = None if lags else memory.pool.long_term.size
            memory.pool = None


def run_to_end(steps: Steps[T]) -> T:
    """The result of a step generator, driven to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _as_pieces(steps: Steps[T]) -> Generator[str, None, T]:
    """A step generator as empty text pieces, for a read's first steps."""
    with contextlib.closing(steps):
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            yield ""


def _disk_bytes(memory: DurablePool) -> int:
    return _size(memory.wal.path) + memory.snapshots.nbytes(memory.wal.header.log_id)


def _check_steps(entries: Sequence[LogEntry]) -> None:
    step = 0
    for entry in entries:
        step += len(entry.chunks)
        if not entry.chunks or entry.step != step:
            raise CorruptState(f"log entry {entry.entry_id} ends at step {entry.step}, expected {step}")


def _receipts_again(entries: list[LogEntry], texts: Sequence[NewText], request_id: str) -> list[Receipt]:
    sent = [(t.text, t.source, dict(t.metadata)) for t in texts]
    if sent != [(e.text, e.source, e.metadata) for e in entries]:
        raise RequestIdReused(f"request id {quote(request_id)} was already used for other texts")
    return [Receipt(e.entry_id, e.tokens, len(e.chunks), e.step, 0.0) for e in entries]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # missing or unreadable (a damaged memory)
        return 0


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
