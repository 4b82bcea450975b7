"""A long-term memory of whole writes: every write's K new tokens per layer, recalled whole.

M+ keeps the tokens a pool drops one by one and a read retrieves M of them per layer, each
layer its own. A fact written once then lives in K tokens scattered by random drops over many
layers' stores, and a read rarely brings all of them back together. This store keeps each
write whole instead: the K tokens per layer it produced (the very tokens the pool received)
with a key of the ids written (`memagent.model.recall_keys`) and the ids themselves, in order,
from which an ask's answer is copied (`memagent.answer_spans`). A read takes the R = M / K
writes whose keys best match its prompt's, by BM25 over the keys as sets (a write sharing a
rare id with the prompt outranks one sharing common ones, and a short write one as long as
many; among equals the later write wins), and places them in every layer's long-term region
best match last, nearest the prompt. Every layer reads the same writes, each as it was made.
The order matters: the default reads the writes nearest its prompt best
(docs/default_model.md, "Why the best match goes last").

A read scores every key (a few ids per write, so cheap beside the model) and moves only its
R writes' tokens to the device; the tokens stay in host memory. A bound evicts the oldest
writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from memagent.model.config import LongTermConfig
from memagent.model.memory_pool import fill
from memagent.model.recalled_kv import store_id

HOST = torch.device("cpu")

# The pool beside a store of whole writes is never read: it only gives each write its context,
# its last K tokens. So it needs no more than the two blocks a config allows at least.
POOL_BLOCKS = 2

# BM25's usual constants: how fast a shared id's weight falls with the write's length, and how much.
SATURATION, LENGTH_WEIGHT = 1.2, 0.75


def best_matches(key_ids: torch.Tensor, key_ends: torch.Tensor, prompt_key: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` writes (keys: `key_ids` cut at `key_ends`) that best match
    `prompt_key`, as a read places them: the best match last. A write scores the sum over the
    ids it shares of idf * (s + 1) / (1 + s * (1 - w + w * its key's length / the mean length)),
    idf = log((n + 1) / (writes holding the id + 1/2)): BM25 where every id occurs once. Without
    the length term, a long write of common words outranks the short one that names the subject
    (see `recall_keys` for what the two changes gave). Among equals the later write is nearer."""
    n = len(key_ends)
    lengths = key_ends.diff(prepend=key_ends.new_zeros(1))
    owner = owners(key_ends)
    matched = torch.isin(key_ids, prompt_key)
    _, which, holding = key_ids[matched].unique(return_inverse=True, return_counts=True)
    idf = torch.log((n + 1) / (holding.double() + 0.5))[which]
    relative = lengths.double() / lengths.double().mean().clamp(min=1)
    damping = (SATURATION + 1) / (1 + SATURATION * (1 - LENGTH_WEIGHT + LENGTH_WEIGHT * relative))
    scores = torch.zeros(n, dtype=torch.float64).index_add_(0, owner[matched], idf * damping[owner[matched]])
    latest_first = torch.arange(n - 1, -1, -1)
    return latest_first[scores[latest_first].argsort(descending=True, stable=True)[:count]].flip(0)


def owners(key_ends: torch.Tensor) -> torch.Tensor:
    """The write each key id belongs to, for keys cut at `key_ends`."""
    return torch.repeat_interleave(torch.arange(len(key_ends)), key_ends.diff(prepend=key_ends.new_zeros(1)))


def ragged_append(ids: torch.Tensor, ends: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids cut at ends, with `new` as one more piece."""
    ids = torch.cat([ids, new.to(HOST, torch.long).flatten()])
    return ids, torch.cat([ends, torch.tensor([len(ids)])])


def ragged_drop(ids: torch.Tensor, ends: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids cut at ends, without the first `count` pieces."""
    first_kept = int(ends[count - 1])
    return ids[first_kept:], ends[count:] - first_kept


def ragged_piece(ids: torch.Tensor, ends: torch.Tensor, i: int) -> torch.Tensor:
    """The `i`-th piece of ids cut at ends."""
    return ids[int(ends[i - 1]) if i else 0 : int(ends[i])]


def holding(key_ids: torch.Tensor, key_ends: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[n] bool: which writes' keys (`key_ids` cut at `key_ends`) hold every id of `ids`."""
    wanted = ids.to(HOST).unique()
    held = torch.bincount(owners(key_ends)[torch.isin(key_ids, wanted)], minlength=len(key_ends))
    return held == len(wanted)


@dataclass(frozen=True)
class Recalled:
    """The writes [B, R'] a read recalls, chosen before it (an ask's, ordered by the engine),
    by their places in the store as it was then: a write appended since moves none of them; an
    eviction or a reset does, and the read then chooses again."""

    store: int  # the store's uid
    first: int  # the number of its first write held
    writes: torch.Tensor

    def of(self, store: "WriteMemory") -> torch.Tensor | None:
        """The writes, if `store` still holds them where they were."""
        return self.writes if (store.uid, store.first) == (self.store, self.first) else None


class WriteMemory:
    """The whole writes of one pool: tokens [L, n * K, d] in host memory and each write's key."""

    def __init__(
        self,
        config: LongTermConfig,
        tokens_per_write: int,
        tokens: torch.Tensor,
        key_ids: torch.Tensor,
        key_ends: torch.Tensor,
        first: int = 0,
        texts: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        self.config = config
        self.tokens_per_write = tokens_per_write  # K
        # A view of `_buffer`, which has room for later writes: a write appends in place and an
        # eviction moves the view's start, so no row a `state_dict` handed out ever changes.
        self.tokens = tokens
        self._buffer = tokens
        self.key_ids = key_ids  # [E] int64: each write's distinct token ids, write after write
        self.key_ends = key_ends  # [n] int64: where each write's ids end in `key_ids`
        # [T] int64 and [n] int64: each write's token ids as written, cut the same way (a store
        # saved before they were kept has none).
        self.text_ids, self.text_ends = texts if texts is not None else (key_ids[:0], torch.zeros_like(key_ends))
        self.first = first  # the number of the first write held (writes are numbered from 0 on)
        self.max_tokens: int | None = None
        self.uid = store_id()  # names these writes' tokens to what reads keep of them (`RecalledKV`)

    @classmethod
    def empty(cls, config: LongTermConfig, tokens_per_write: int, memory: torch.Tensor) -> "WriteMemory":
        """An empty store for a pool `memory` [L, N, d]."""
        L, _, d = memory.shape
        none = torch.zeros(0, dtype=torch.long)
        return cls(config, tokens_per_write, torch.zeros(L, 0, d, dtype=memory.dtype, device=HOST), none, none)

    @property
    def slots(self) -> int:
        """M: tokens a read places in each layer's prefix, R whole writes."""
        return self.config.num_ltm_blocks * self.tokens_per_write

    @property
    def num_layers(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_writes(self) -> int:
        return len(self.key_ends)

    def sizes(self) -> list[int]:
        """Stored tokens per layer."""
        return [self.tokens.shape[1]] * self.num_layers

    @property
    def size(self) -> int:
        return self.tokens.shape[1]

    # -- writing ---------------------------------------------------------------------------

    def write(self, new: torch.Tensor, key: torch.Tensor, text: torch.Tensor | None = None) -> None:
        """Keep the new memory [L, n, d] of one write whose key is `key` (distinct ids; a first
        write's n < K tokens are repeated to K, as they fill the pool) and whose token ids are
        `text` (None: not kept)."""
        block = fill(new.detach().to(HOST, self.tokens.dtype), self.tokens_per_write)
        self.tokens = self._append(block)
        self.key_ids, self.key_ends = ragged_append(self.key_ids, self.key_ends, key)
        text = text if text is not None else self.text_ids[:0]
        self.text_ids, self.text_ends = ragged_append(self.text_ids, self.text_ends, text)
        self._bound()

    def rekey(self, key: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Give each write whose token ids were kept the key `key` makes of them, as a write gets
        now (a store saved under an older way of keying holds old keys); the others keep theirs."""
        keys = []
        for write in range(self.num_writes):
            text = self.text(write)
            keys.append(key(text).to(HOST, torch.long) if len(text) else self.key(write))
        self.key_ids = torch.cat(keys) if keys else self.key_ids[:0]
        self.key_ends = torch.tensor([len(k) for k in keys], dtype=torch.long).cumsum(0)

    def _append(self, block: torch.Tensor) -> torch.Tensor:
        """`torch.cat([self.tokens, block], 1)`, in place after the tokens where the buffer has
        room, else in a new buffer of twice the live size; a bounded store's buffer holds at most
        a quarter more than the bound (one copy of the store per quarter-bound of writes)."""
        L, n, d = self.tokens.shape
        start = (self.tokens.data_ptr() - self._buffer.data_ptr()) // (d * self.tokens.itemsize) if n else 0
        needed = n + block.shape[1]
        if not n or start + needed > self._buffer.shape[1]:
            rows = 2 * needed
            if self.max_tokens is not None:
                rows = max(needed, min(rows, self.max_tokens + max(self.max_tokens // 4, block.shape[1])))
            self._buffer = self.tokens.new_empty(L, rows, d)
            self._buffer[:, :n] = self.tokens
            start = 0
        self._buffer[:, start + n : start + needed] = block
        return self._buffer[:, start : start + needed]

    # -- the bound -------------------------------------------------------------------------

    def limit(self, max_tokens: int | None) -> None:
        """Keep at most `max_tokens` tokens per layer (None: unbounded): the latest writes, now
        and after every write. At least M, so that a full read always has R writes."""
        if max_tokens is not None and max_tokens < self.slots:
            raise ValueError(
                f"a long-term memory bound of {max_tokens} tokens per layer is below the {self.slots} a read places"
            )
        self.max_tokens = max_tokens
        self._bound()

    def _bound(self) -> None:
        if self.max_tokens is None:
            return
        evicted = self.num_writes - self.max_tokens // self.tokens_per_write
        if evicted > 0:
            self.tokens = self.tokens[:, evicted * self.tokens_per_write :]
            self.key_ids, self.key_ends = ragged_drop(self.key_ids, self.key_ends, evicted)
            self.text_ids, self.text_ends = ragged_drop(self.text_ids, self.text_ends, evicted)
            self.first += evicted

    # -- reading ---------------------------------------------------------------------------

    def choose(self, prompt_keys: list[torch.Tensor]) -> torch.Tensor:
        """The writes [B, R'] each of B prompts, given by their keys, reads, R' = min(R, writes
        held), the best match last. A text written again is recalled once, as its latest write:
        an agent that logs the same tool output ten times would otherwise fill a read with it
        (copies only fill what distinct writes leave)."""
        R = min(self.config.num_ltm_blocks, self.num_writes)
        ranked = [best_matches(self.key_ids, self.key_ends, key, self.num_writes) for key in prompt_keys]
        return torch.stack([self._distinct(writes, R) for writes in ranked])

    def recalled(self, writes: torch.Tensor) -> Recalled:
        """`writes` [B, R'] (as `choose` gives them) pinned to this store as it is now."""
        return Recalled(self.uid, self.first, writes)

    def _distinct(self, ranked: torch.Tensor, count: int) -> torch.Tensor:
        """The best `count` of `ranked` (best last) whose texts differ, best last; copies after
        them where too few differ."""
        seen, distinct, copies = set(), [], []
        for write in ranked.flip(0).tolist():
            written = self._written(write)
            (copies if written in seen else distinct).append(write)
            seen.add(written)
            if len(distinct) == count:
                break
        return torch.tensor((distinct + copies)[:count][::-1])

    def _written(self, write: int) -> tuple:
        """What tells writes apart: their texts, or their keys if written before texts were kept."""
        text = self.text(write)
        return ("text", *text.tolist()) if len(text) else ("key", *self.key(write).tolist())

    def key(self, write: int) -> torch.Tensor:
        """The key ids of the `write`-th write held (0: the oldest held)."""
        return ragged_piece(self.key_ids, self.key_ends, write)

    def text(self, write: int) -> torch.Tensor:
        """The token ids of the `write`-th write held, as written (empty if they were not kept)."""
        return ragged_piece(self.text_ids, self.text_ends, write)

    def gather(self, layer: int, chosen: torch.Tensor, device=None) -> torch.Tensor:
        """Layer `layer`'s tokens [B, R' * K, d] of the writes `chosen` [B, R'], on `device`;
        only these cross to it."""
        K = self.tokens_per_write
        picked = self.tokens[layer].view(self.num_writes, K, -1)[chosen.to(HOST)].flatten(1, 2)
        device = torch.device(device) if device is not None else HOST
        if device.type != "cuda":
            return picked.to(device)
        return picked.pin_memory().to(device, non_blocking=True)

    # -- whole-store operations --------------------------------------------------------------

    def reset(self) -> None:
        """Forget every write (the pool was reset)."""
        self.tokens = self._buffer = self.tokens[:, :0].clone()
        self.key_ids, self.key_ends = self.key_ids[:0], self.key_ends[:0]
        self.text_ids, self.text_ends = self.text_ids[:0], self.text_ends[:0]
        self.first = 0
        self.uid = store_id()  # numbers start again from 0, for other writes

    def clone(self) -> "WriteMemory":
        keys = self.key_ids.clone(), self.key_ends.clone()
        texts = self.text_ids.clone(), self.text_ends.clone()
        twin = WriteMemory(self.config, self.tokens_per_write, self.tokens.clone(), *keys, self.first, texts)
        twin.max_tokens = self.max_tokens
        return twin

    def to(self, device=None, dtype: torch.dtype | None = None) -> "WriteMemory":
        """Cast the tokens to `dtype`, in place; they stay in host memory whatever `device`."""
        if dtype is not None and dtype != self.tokens.dtype:
            self.tokens = self._buffer = self.tokens.to(dtype)
            self.uid = store_id()
        return self

    @property
    def nbytes(self) -> int:
        ragged = (self.key_ids, self.key_ends, self.text_ids, self.text_ends)
        return self.tokens.nbytes + sum(t.nbytes for t in ragged)

    @property
    def host_nbytes(self) -> int:
        return self.tokens.nbytes

    # -- files -----------------------------------------------------------------------------

    @property
    def end(self) -> int:
        """The number the next write will get."""
        return self.first + self.num_writes

    def rows(self, start: int, end: int) -> torch.Tensor:
        """The tokens [L, (end - start) * K, d] of writes `start` to `end` (held ones; a view)."""
        if not self.first <= start <= end <= self.end:
            raise ValueError(f"writes {start}-{end} are not all held (held: {self.first}-{self.end})")
        K = self.tokens_per_write
        return self.tokens[:, (start - self.first) * K : (end - self.first) * K]

    def state_dict(self, since: int | None = None) -> dict[str, torch.Tensor]:
        """The tensors to save: each layer's tokens (views no later write changes), the keys and
        the first write's number. With `since`, the tokens of writes `since` on only: the earlier
        ones are saved apart (snapshot segments, `memagent.store.snapshots`) and `from_state`
        takes them as `ltm_sealed.{layer}`, from write `ltm_sealed_from` on."""
        since = self.first if since is None else since
        state = {f"ltm.{layer}": tokens for layer, tokens in enumerate(self.rows(since, self.end))}
        state |= {"ltm_write_keys": self.key_ids, "ltm_write_key_ends": self.key_ends}
        state |= {"ltm_write_texts": self.text_ids, "ltm_write_text_ends": self.text_ends}
        state |= {"ltm_first_write": torch.tensor([self.first]), "ltm_tokens_from": torch.tensor([since])}
        return {k: v.detach().contiguous() for k, v in state.items()}

    def metadata(self) -> str:
        return json.dumps({"config": asdict(self.config), "tokens_per_write": self.tokens_per_write})

    @classmethod
    def from_state(
        cls, config: LongTermConfig, tokens_per_write: int, state: dict[str, torch.Tensor], memory: torch.Tensor
    ) -> "WriteMemory":
        """Take the store's tensors out of `state`, for the pool `memory` [L, N, d]. Raises
        ValueError on missing, misshapen or inconsistent tensors."""
        L, _, d = memory.shape
        K = tokens_per_write
        names = [f"ltm.{layer}" for layer in range(L)] + ["ltm_write_keys", "ltm_write_key_ends"]
        missing = [name for name in names if name not in state]
        if missing:
            raise ValueError(f"long-term memory tensors missing: {missing}")
        first = _number(state, "ltm_first_write", 0)  # files from before numbering hold none
        since = _number(state, "ltm_tokens_from", first)
        layers = [[state.pop(f"ltm.{layer}")] for layer in range(L)]
        if since != first:
            for pieces, sealed in zip(layers, _sealed(state, L, K, first, since)):
                pieces.insert(0, sealed)
        key_ids, key_ends = _ragged(state, "ltm_write_keys", "ltm_write_key_ends")
        n = len(key_ends)
        texts = (key_ids[:0], torch.zeros_like(key_ends))  # files from before texts were kept
        if "ltm_write_texts" in state or "ltm_write_text_ends" in state:
            texts = _ragged(state, "ltm_write_texts", "ltm_write_text_ends")
            if len(texts[1]) != n:
                raise ValueError(f"ltm_write_text_ends has {len(texts[1])} writes where the keys have {n}")
        for layer, pieces in enumerate(layers):
            shape = (sum(p.shape[0] for p in pieces), *pieces[-1].shape[1:])
            if any(p.dim() != 2 for p in pieces) or shape != (n * K, d):
                raise ValueError(f"ltm.{layer} {shape} is not {n} writes of {K} tokens of size {d}")
            if not all(p.isfinite().all() for p in pieces):
                raise ValueError(f"ltm.{layer} holds values that are not finite")
        tokens = torch.empty(L, n * K, d, dtype=memory.dtype, device=HOST)
        for layer, pieces in enumerate(layers):
            torch.cat([p.to(HOST, memory.dtype) for p in pieces], out=tokens[layer])
        return cls(config, K, tokens, key_ids, key_ends, first, texts)


def _ragged(state: dict[str, torch.Tensor], ids_name: str, ends_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids saved as `ids_name`, cut into writes at `ends_name`; raises ValueError unless
    both are there, integer vectors, and the ends cut the ids (non-negative) in order."""
    ids, ends = state.pop(ids_name, None), state.pop(ends_name, None)
    if ids is None or ends is None:
        raise ValueError(f"long-term memory tensors missing: {ids_name} and {ends_name} go together")
    if ids.dim() != 1 or ends.dim() != 1 or ids.is_floating_point() or ends.is_floating_point():
        raise ValueError(f"{ids_name} and {ends_name} must be vectors of integers")
    ids, ends = ids.long(), ends.long()
    total = int(ends[-1]) if len(ends) else 0
    if bool((ends.diff(prepend=ends.new_zeros(1)) < 0).any()) or total != len(ids):
        raise ValueError(f"{ends_name} does not divide {ids_name} into writes")
    if bool((ids < 0).any()):
        raise ValueError(f"{ids_name} holds negative token ids")
    return ids, ends


def _number(state: dict[str, torch.Tensor], name: str, default: int | None = None) -> int:
    """The write number saved as `name` (`default` if there is none)."""
    value = state.pop(name, None)
    if value is None and default is not None:
        return default
    if value is None or value.shape != (1,) or value.is_floating_point() or int(value) < 0:
        raise ValueError(f"{name} must hold one write number")
    return int(value)


def _sealed(state: dict[str, torch.Tensor], L: int, K: int, first: int, since: int) -> list[torch.Tensor]:
    """Each layer's tokens of writes `first` to `since`, out of the sealed ones in `state`."""
    if "ltm_sealed_from" not in state:
        raise ValueError(f"the tokens of writes {first}-{since} are saved apart, and are not here")
    start = _number(state, "ltm_sealed_from")
    layers = [state.pop(f"ltm_sealed.{layer}", None) for layer in range(L)]
    if any(rows is None or rows.dim() != 2 for rows in layers):
        raise ValueError("sealed long-term tokens are missing or misshapen for some layers")
    if not start <= first < since or any(rows.shape[0] < (since - start) * K for rows in layers):
        raise ValueError(f"the sealed writes (from {start} on) do not hold writes {first}-{since}")
    return [rows[(first - start) * K : (since - start) * K] for rows in layers]
