"""M+'s long-term memory: where the tokens a pool drops go, and which of them a read gets back.

Per layer it keeps the stored tokens with their retriever keys, ages (a larger age is older)
and recall frequencies, and the tokens dropped since the last merge ("pending", M+'s cached
dropped memories). The rules follow the released M+ code (`modeling_mplus.py`) exactly, quirks
included; tests/fixtures/reference_mplus/README.md states them:

- a write drops K pool tokens per layer; they become pending with a key computed then, and the
  age they had in the pool. A pool token's age is fixed when it enters (K-1 .. 0 for a write's
  K tokens) and grows only once it has left. Every stored and pending age grows by K per write.
- every F-th write merges the pending tokens into the store with recall frequency r0, then
  every frequency loses delta; if more than M tokens stay above 0.01 the rest are pruned,
  otherwise delta is given back and nothing is pruned.
- a read of layer l takes M tokens: the M best-scoring of stored then pending tokens, or, while
  the store holds fewer than M, the last M of its indices cycled, unscored. They are placed
  oldest first (ties: the later candidate first).

Beyond M+, a store may be bounded (`limit`): after each merge a layer holding more than
`max_tokens` keeps the rows with the highest recall frequencies, the youngest among equals. M+
has no bound, so an unbounded store (the default here) follows its rules exactly.

Where it lives: the tokens stay in host memory whatever the device, since a read needs only
its M chosen tokens per layer, which it copies to the device through a page-locked buffer.
Keys, ages and frequencies follow the pool: every read scores every key, so they sit beside
the queries (a key is s numbers against a token's d), and choosing needs the ages there too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from memagent.model.config import LongTermConfig
from memagent.model.memory_pool import Dropped, fill
from memagent.model.write_memory import Recalled, WriteMemory

_MERGE_THRESHOLD = 0.01  # a stored token lives while its recall frequency stays above this
HOST = torch.device("cpu")


def _take(t: torch.Tensor, index) -> torch.Tensor:
    """`t[index]`, with an index tensor brought to `t`'s device first."""
    return t[index.to(t.device) if isinstance(index, torch.Tensor) else index]


@dataclass
class Rows:
    """Memory tokens with their retriever keys and ages."""

    tokens: torch.Tensor  # [n, d]
    keys: torch.Tensor  # [n, s]
    ages: torch.Tensor  # [n] int64; a larger age is older

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> "Rows":
        return Rows(*(_take(t, index) for t in self.tensors()))

    def cat(self, other: "Rows") -> "Rows":
        return Rows(*(torch.cat([a, b]) for a, b in zip(self.tensors(), other.tensors())))

    def older(self, by: int) -> "Rows":
        return Rows(self.tokens, self.keys, self.ages + by)

    def place(self, device=None, dtype: torch.dtype | None = None) -> "Rows":
        """Tokens in host memory, keys and ages on `device`; tokens and keys (never ages) cast to `dtype`."""
        return Rows(self.tokens.to(HOST, dtype), self.keys.to(device, dtype), self.ages.to(device))

    def clone(self) -> "Rows":
        return Rows(*(t.clone() for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tokens, self.keys, self.ages


class LongTermMemory:
    """The long-term memory of one pool: per layer, stored and pending rows; plus the pool's ages."""

    def __init__(
        self,
        config: LongTermConfig,
        tokens_per_write: int,
        stored: list[Rows],
        frequencies: list[torch.Tensor],
        pending: list[Rows],
        pool_ages: torch.Tensor,
        update_step: int = 0,
        max_tokens: int | None = None,
    ):
        self.config = config
        self.tokens_per_write = tokens_per_write  # K
        self.stored = stored
        self.frequencies = frequencies  # per layer [n] float64: recall frequencies
        self.pending = pending
        self.pool_ages = pool_ages  # [L, N] int64: the age of each pool token
        self.update_step = update_step  # grows by K per write; a merge resets it
        self.max_tokens = max_tokens  # stored tokens per layer after a merge; None: unbounded, as M+
        # Per layer, buffers with spare rows that the stored tokens and keys are views of, so a
        # merge appends in place and an eviction packs in place instead of copying the whole
        # store (`_append`, `_kept`).
        self._buffers: list[dict[str, torch.Tensor]] = [{} for _ in stored]
        # (layer, kind) of buffers a `state_dict` handed out views of: never rewritten in place.
        self._exposed: set[tuple[int, str]] = set()

    @classmethod
    def empty(cls, config: LongTermConfig, tokens_per_write: int, memory: torch.Tensor) -> "LongTermMemory":
        """An empty long-term memory for a pool `memory` [L, N, d]."""
        L, N, d = memory.shape
        none = Rows(
            torch.zeros(0, d, dtype=memory.dtype, device=HOST),
            memory.new_zeros(0, config.selector_hidden_dim),
            torch.zeros(0, dtype=torch.long, device=memory.device),
        )
        frequency = torch.zeros(0, dtype=torch.float64, device=memory.device)
        ages = torch.zeros(L, N, dtype=torch.long, device=memory.device)
        return cls(config, tokens_per_write, [none] * L, [frequency] * L, [none] * L, ages)

    @property
    def slots(self) -> int:
        """M: tokens a read places in each layer's prefix."""
        return self.config.num_ltm_blocks * self.tokens_per_write

    @property
    def num_layers(self) -> int:
        return len(self.stored)

    def sizes(self) -> list[int]:
        """Stored tokens per layer."""
        return [len(rows) for rows in self.stored]

    @property
    def size(self) -> int:
        """Tokens the fullest layer holds, stored and pending."""
        return max(len(stored) + len(pending) for stored, pending in zip(self.stored, self.pending))

    # -- reading ---------------------------------------------------------------------------

    def scored(self, layer: int) -> bool:
        """Whether reads of `layer` score candidates (else they cycle through the store unscored)."""
        return len(self.stored[layer]) >= self.slots

    def candidates(self, layer: int) -> tuple[Rows, Rows]:
        """What a scored read chooses from, in candidate order: stored, then pending rows."""
        return self.stored[layer], self.pending[layer]

    def choose(self, layer: int, scores: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Candidate indices [batch, M] of the tokens a read places, in prefix order.

        `scores` [batch, n + c] scores every candidate; None for a store smaller than M.
        """
        stored = self.stored[layer]
        if scores is None:
            n = len(stored)
            chosen = ((torch.arange(self.slots, device=stored.ages.device) - self.slots) % n).expand(batch, -1)
            ages = stored.ages
        else:
            chosen = scores.topk(self.slots, dim=-1).indices.to(stored.ages.device)
            ages = torch.cat([stored.ages, self.pending[layer].ages])
        # Oldest first; among equal ages the later candidate first (M+'s reversed stable argsort).
        chosen = chosen.sort(dim=-1, descending=True).values
        by_age = ages[chosen].sort(dim=-1, descending=True, stable=True).indices
        return chosen.gather(-1, by_age)

    def tokens(self, layer: int, chosen: torch.Tensor, device=None) -> torch.Tensor:
        """The tokens [B, M, d] at candidate indices `chosen` [B, M], on `device` (default: `chosen`'s).

        Gathered in host memory; only these B * M tokens cross to the device."""
        device = torch.device(device) if device is not None else chosen.device
        stored, pending = self.stored[layer].tokens, self.pending[layer].tokens
        chosen = chosen.to(HOST)
        n = len(stored)
        if not len(pending):
            picked = stored[chosen]
        else:
            from_store = (chosen < n)[..., None]
            picked = torch.where(from_store, stored[chosen.clamp(max=n - 1)], pending[(chosen - n).clamp(min=0)])
        if device.type != "cuda":
            return picked.to(device)
        # Page-locked, the copy runs asynchronously; the stream orders it before any use.
        return picked.pin_memory().to(device, non_blocking=True)

    # -- writing ---------------------------------------------------------------------------

    def write(self, dropped: Dropped | None, keys: torch.Tensor | None, written: int) -> None:
        """Account for one pool write of `written` tokens that dropped `dropped` (keys [L, K, s])."""
        L, N = self.pool_ages.shape
        K = self.tokens_per_write
        new_ages = torch.arange(written - 1, -1, -1, device=self.pool_ages.device).expand(L, written)
        self.stored = [rows.older(K) for rows in self.stored]
        self.pending = [rows.older(K) for rows in self.pending]
        if dropped is None:  # a first write filled an empty pool
            self.pool_ages = fill(new_ages, N)
        else:
            index = dropped.index.to(self.pool_ages.device)
            kept = torch.ones_like(self.pool_ages, dtype=torch.bool).scatter(1, index, False)
            dropped_ages = self.pool_ages.gather(1, index)
            self.pool_ages = torch.cat([self.pool_ages[kept].view(L, -1), new_ages], dim=1)
            for layer in range(L):
                moved = Rows(dropped.tokens[layer], keys[layer], dropped_ages[layer]).place(self.pool_ages.device)
                self.pending[layer] = self.pending[layer].cat(moved)
        self.update_step += K
        if self.update_step >= self.config.update_ltm_frequency * K:
            self._merge()

    def _merge(self) -> None:
        c = self.config
        for layer in range(self.num_layers):
            arriving = self.pending[layer]
            stored = self.stored[layer]
            rows = Rows(
                self._append(layer, "tokens", stored.tokens, arriving.tokens),
                self._append(layer, "keys", stored.keys, arriving.keys),
                torch.cat([stored.ages, arriving.ages]),
            )
            start = torch.full((len(arriving),), float(c.initial_rf_when_moving_stm_to_ltm), dtype=torch.float64)
            frequency = torch.cat([self.frequencies[layer], start.to(self.pool_ages.device)]) - c.decay_frequency
            alive = frequency > _MERGE_THRESHOLD
            if int(alive.sum()) > self.slots:
                if not bool(alive.all()):
                    rows, frequency = rows[alive], frequency[alive]
            else:  # M+ prunes only while more than M would stay; the decay is then undone
                frequency = frequency + c.decay_frequency
            self.stored[layer], self.frequencies[layer] = rows, frequency
            self.pending[layer] = arriving[:0]
            self._bound(layer)
        self.update_step = 0

    def _append(self, layer: int, kind: str, current: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """`torch.cat([current, new])`, written in place after `current` where it is a view of
        this layer's buffer with room to spare; else into a new buffer of twice the size. A
        store grows by K rows per write, so each write copies O(K) rows, not the whole store."""
        n, total = len(current), len(current) + len(new)
        start = self._offset(layer, kind, current)
        buffer = self._buffers[layer].get(kind)
        if start is None or start + total > len(buffer):
            buffer = current.new_empty((2 * total, *current.shape[1:]))
            buffer[:n] = current
            self._buffers[layer][kind] = buffer
            self._exposed.discard((layer, kind))
            start = 0
        buffer[start + n : start + total] = new
        return buffer[start : start + total]

    def _offset(self, layer: int, kind: str, rows: torch.Tensor) -> int | None:
        """The first row of this layer's `kind` buffer that `rows` is a view of, if it is one."""
        buffer = self._buffers[layer].get(kind)
        if buffer is None or not len(rows) or rows.device != buffer.device or rows.dtype != buffer.dtype:
            return None
        start, rest = divmod(rows.data_ptr() - buffer.data_ptr(), buffer[0].nbytes)
        inside = rest == 0 and 0 <= start and start + len(rows) <= len(buffer)
        return start if inside and rows.is_contiguous() else None

    # -- the bound -------------------------------------------------------------------------

    def limit(self, max_tokens: int | None) -> None:
        """Bound every layer's store to `max_tokens` (None: unbounded), now and after every merge.

        A store already within the bound is unchanged, so setting the same bound again (each
        write does) changes nothing. At least M, so that a full store is always scored."""
        if max_tokens is not None and max_tokens < self.slots:
            raise ValueError(
                f"a long-term memory bound of {max_tokens} tokens per layer is below the {self.slots} a read places"
            )
        self.max_tokens = max_tokens
        for layer in range(self.num_layers):
            self._bound(layer)

    def _bound(self, layer: int) -> None:
        """Evict beyond `max_tokens`: the lowest recall frequencies go first, the oldest among
        equals (and, among those, the later row); the rest keep their order."""
        rows, frequency = self.stored[layer], self.frequencies[layer]
        if self.max_tokens is None or len(rows) <= self.max_tokens:
            return
        youngest_first = rows.ages.argsort(stable=True).to(frequency.device)
        ranked = youngest_first[frequency[youngest_first].argsort(descending=True, stable=True)]
        keep = ranked[: self.max_tokens].sort().values
        tokens, keys = (self._kept(layer, kind, t, keep) for kind, t in (("tokens", rows.tokens), ("keys", rows.keys)))
        self.stored[layer] = Rows(tokens, keys, _take(rows.ages, keep))
        self.frequencies[layer] = frequency[keep]

    def _kept(self, layer: int, kind: str, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`rows[keep]` (`keep`: sorted indices), packed in place where `rows` is a view of this
        layer's buffer that no `state_dict` handed out: the kept rows after the last evicted one
        stay where they are, and the kept rows before it move up next to them. Evictions take
        the oldest rows, which lie first, so few rows move, not the whole store."""
        if self._offset(layer, kind, rows) is None or (layer, kind) in self._exposed:
            return _take(rows, keep)
        keep = keep.to(rows.device)
        evicted = torch.ones(len(rows), dtype=torch.bool, device=rows.device).index_fill_(0, keep, False)
        last = int(evicted.nonzero()[-1])
        moving = len(keep) - (len(rows) - 1 - last)  # kept rows before the last evicted one
        start = last + 1 - moving
        if moving:
            rows[start : last + 1] = rows[keep[:moving]]  # gathered first: overlap is safe
        return rows[start:]

    # -- whole-store operations --------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything (the pool was reset)."""
        self.stored = [rows[:0] for rows in self.stored]
        self.pending = [rows[:0] for rows in self.pending]
        self.frequencies = [f[:0] for f in self.frequencies]
        self.pool_ages = torch.zeros_like(self.pool_ages)
        self.update_step = 0
        self._buffers = [{} for _ in self.stored]  # views of them may live on (snapshots): never write there again
        self._exposed = set()

    def clone(self) -> "LongTermMemory":
        return LongTermMemory(
            self.config,
            self.tokens_per_write,
            [rows.clone() for rows in self.stored],
            [f.clone() for f in self.frequencies],
            [rows.clone() for rows in self.pending],
            self.pool_ages.clone(),
            self.update_step,
            self.max_tokens,
        )

    def to(self, device=None, dtype: torch.dtype | None = None) -> "LongTermMemory":
        """Move keys, ages and frequencies to `device` (the tokens stay in host memory) and cast
        tokens and keys to `dtype`, in place."""
        self.stored = [rows.place(device, dtype) for rows in self.stored]
        self.pending = [rows.place(device, dtype) for rows in self.pending]
        self.frequencies = [f.to(device) for f in self.frequencies]
        self.pool_ages = self.pool_ages.to(device)
        return self

    @property
    def nbytes(self) -> int:
        tensors = [t for rows in self.stored + self.pending for t in rows.tensors()] + self.frequencies
        return sum(t.nbytes for t in tensors) + self.pool_ages.nbytes

    @property
    def host_nbytes(self) -> int:
        """Bytes of the tokens, which stay in host memory wherever the pool is."""
        return sum(rows.tokens.nbytes for rows in self.stored + self.pending)

    # -- files: the released checkpoint's names, plus the state a checkpoint does not carry ---

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors to save; the stored rows are views, which later writes never change."""
        self._exposed |= {(layer, kind) for layer in range(self.num_layers) for kind in ("tokens", "keys")}
        state = {"pool_ages": self.pool_ages, "ltm_update_step": torch.tensor(self.update_step)}
        for layer, (rows, pending) in enumerate(zip(self.stored, self.pending)):
            state |= {
                f"ltm.{layer}": rows.tokens,
                f"ltm_keys.{layer}": rows.keys,
                f"ltm_ages.{layer}": rows.ages,
                f"ltm_recall_frequencies.{layer}": self.frequencies[layer],
                f"ltm_pending.{layer}": pending.tokens,
                f"ltm_pending_keys.{layer}": pending.keys,
                f"ltm_pending_ages.{layer}": pending.ages,
            }
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def metadata(self) -> str:
        """What `from_state` needs besides the tensors, as JSON."""
        return json.dumps({"config": asdict(self.config), "tokens_per_write": self.tokens_per_write})

    @classmethod
    def from_state(
        cls, config: LongTermConfig, tokens_per_write: int, state: dict[str, torch.Tensor], memory: torch.Tensor
    ) -> "LongTermMemory":
        """Take a long-term memory's tensors out of `state`, for the pool `memory` [L, N, d].

        A released checkpoint holds only the store (`ltm.{l}`, `ltm_keys.{l}`, `ltm_ages.{l}`,
        `ltm_recall_frequencies.{l}`, all float32; ages truncated to whole numbers as M+ does):
        nothing is pending, every pool age is 0. Raises ValueError on missing, misshapen or
        inconsistent tensors (values that no sequence of writes makes).
        """
        memory_ages = state.pop("pool_ages", None)
        update_step = int(state.pop("ltm_update_step", torch.tensor(0)))
        long_term = cls.empty(config, tokens_per_write, memory)
        L, N, d = memory.shape
        s = config.selector_hidden_dim
        if memory_ages is not None:
            if memory_ages.shape != (L, N):
                raise ValueError(f"pool_ages {tuple(memory_ages.shape)} does not match the pool ({L}, {N})")
            long_term.pool_ages = memory_ages.to(device=memory.device, dtype=torch.long)
        long_term.update_step = update_step

        def rows(prefix: str, layer: int) -> Rows:
            names = [f"{prefix}.{layer}", f"{prefix}_keys.{layer}", f"{prefix}_ages.{layer}"]
            missing = [name for name in names if name not in state]
            if missing:
                raise ValueError(f"long-term memory tensors missing: {missing}")
            tokens, keys, ages = (state.pop(name) for name in names)
            n = tokens.shape[0]
            if tokens.shape != (n, d) or keys.shape != (n, s) or ages.shape != (n,):
                raise ValueError(
                    f"{prefix} layer {layer}: tokens {tuple(tokens.shape)}, keys {tuple(keys.shape)} and ages "
                    f"{tuple(ages.shape)} do not fit hidden size {d} and key size {s}"
                )
            return Rows(tokens, keys, ages.to(torch.long)).place(memory.device, memory.dtype)

        for layer in range(L):
            long_term.stored[layer] = rows("ltm", layer)
            frequency = state.pop(f"ltm_recall_frequencies.{layer}", None)
            if frequency is None or frequency.shape != (len(long_term.stored[layer]),):
                raise ValueError(f"ltm_recall_frequencies.{layer} is missing or does not match ltm.{layer}")
            long_term.frequencies[layer] = frequency.to(memory.device, torch.float64)
            if f"ltm_pending.{layer}" in state:
                long_term.pending[layer] = rows("ltm_pending", layer)
        long_term._check()
        return long_term

    def _check(self) -> None:
        """Raise ValueError where the state is not one that writes make."""
        K, F = self.tokens_per_write, self.config.update_ltm_frequency
        if not 0 <= self.update_step < F * K or self.update_step % K:
            raise ValueError(f"ltm_update_step {self.update_step} is not a multiple of {K} below {F * K}")
        if bool((self.pool_ages < 0).any()):
            raise ValueError("pool_ages holds negative ages")
        for layer, (stored, pending) in enumerate(zip(self.stored, self.pending)):
            if len(pending) > self.update_step:
                raise ValueError(
                    f"layer {layer} has {len(pending)} pending tokens, more than the {self.update_step} "
                    "written since the last merge"
                )
            for name, rows in (("ltm", stored), ("ltm_pending", pending)):
                if not (rows.tokens.isfinite().all() and rows.keys.isfinite().all()):
                    raise ValueError(f"{name} layer {layer} holds values that are not finite")
                if bool((rows.ages < 0).any()):
                    raise ValueError(f"{name} layer {layer} holds negative ages")
            if not self.frequencies[layer].isfinite().all():
                raise ValueError(f"ltm_recall_frequencies.{layer} holds values that are not finite")


LongTermStore = LongTermMemory | WriteMemory  # M+'s kind, or whole writes


def _kind(config: LongTermConfig) -> type[LongTermMemory] | type[WriteMemory]:
    return WriteMemory if config.ltm_recall == "writes" else LongTermMemory


def new_long_term(config: LongTermConfig, tokens_per_write: int, memory: torch.Tensor) -> LongTermStore:
    """An empty long-term memory of the kind `config` asks for, for a pool `memory` [L, N, d]."""
    return _kind(config).empty(config, tokens_per_write, memory)


def long_term_from_state(
    config: LongTermConfig, tokens_per_write: int, state: dict[str, torch.Tensor], memory: torch.Tensor
) -> LongTermStore:
    """`from_state` of the kind `config` asks for."""
    return _kind(config).from_state(config, tokens_per_write, state, memory)


def long_term_from_metadata(metadata: str, state: dict[str, torch.Tensor], memory: torch.Tensor) -> LongTermStore:
    """The long-term memory a pool file's `metadata` (its `metadata()`) and tensors `state` hold."""
    raw = json.loads(metadata)
    return long_term_from_state(LongTermConfig(**raw["config"]), raw["tokens_per_write"], state, memory)


def mismatch(long_term: LongTermStore | None, config: LongTermConfig | None, tokens_per_write: int) -> str | None:
    """Why a pool's long-term memory does not fit a model with `config` (None without one), or None."""
    if config is None:
        return None if long_term is None else "it holds a long-term memory; this model has none"
    if long_term is None:
        return "its long-term memory is missing; this model has one"
    if long_term.config != config or long_term.tokens_per_write != tokens_per_write:
        return (
            f"its long-term memory was made with {long_term.config} and K = {long_term.tokens_per_write}; "
            f"this model's is {config} with K = {tokens_per_write}"
        )
    return None


@dataclass
class LongTermRead:
    """One read's use of a long-term memory: what each layer chose."""

    store: LongTermStore
    # Per layer: [B, M] candidate indices (M+), or [B, R'] recalled writes (the same in every layer).
    chosen: list[torch.Tensor] = field(default_factory=list)
    # Whole writes chosen before the read (`Engine.answer_reading`), which it takes if still held.
    ahead: Recalled | None = None
