"""MemoryLLM: a Llama-family decoder whose every layer also attends to a pool of memory tokens.

Module names follow transformers' `modeling_llama.py`, so released weights load one to one.
Reading treats [bos_embedding, memory] as a pre-filled region of the key/value cache. Writing
runs the context behind the last K memory tokens and keeps the last K outputs of each layer.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memagent.model import generation, loading
from memagent.model.attention import PREFILL_QUERY_ROWS, attend, token_mask
from memagent.model.config import MemoryLLMConfig
from memagent.model.kv_cache import KVCache, LayerRead
from memagent.model.long_term_memory import LongTermRead, new_long_term
from memagent.model.lora import writing
from memagent.model.quantized import float_weights, products
from memagent.model.recall_keys import distinct_ids
from memagent.model.recalled_kv import RecalledKV
from memagent.model.memory_pool import Dropped, MemoryPool, PrefixKV
from memagent.model.retriever import Retriever
from memagent.model.rope import RotaryEmbedding, apply_rope, rotate_into
from memagent.model.write_memory import WriteMemory


# Dtypes whose prefix is updated on a write rather than recomputed: in half precision every
# re-rotation would round the surviving keys again, and the error would grow with each write.
INCREMENTAL_PREFIX_DTYPES = (torch.float32, torch.float64)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: MemoryLLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def project_kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        k, v = self.unrotated_kv(x)
        return apply_rope(k, cos, sin), v

    def unrotated_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys before RoPE and values [B, kv_heads, T, head_dim] of normed inputs x [B, T, d]."""
        k, v = products(x, self.k_proj, self.v_proj)
        return self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        reads: Sequence[LayerRead] = (),
        n_queries: int | None = None,
    ) -> torch.Tensor:
        """With `reads`: a read, each cache's rows attending its memory prefix and token slots.
        Without: a write's self-attention over x under `mask` [1, 1, T, S]."""
        k, v = self.project_kv(x, cos, sin)
        if n_queries is not None:
            x, cos, sin = x[:, -n_queries:], cos[:, -n_queries:], sin[:, -n_queries:]
        q = apply_rope(self._heads(self.q_proj(x), self.num_heads), cos, sin)
        B, H, T, D = q.shape
        if reads:
            # Rows of several requests (each reading its own memory) share the projections
            # above and below; only attention runs per cache, and per memory for the prefix.
            y = self._attend_caches(q, k, v, reads)
        else:
            # Grouped-query attention without copying keys: fold each group's query heads into
            # the time axis so every kv head serves [rep * T] queries.
            rep = H // self.kv_heads
            q = q.reshape(B, self.kv_heads, rep * T, D)
            mask = mask.repeat(1, 1, rep, 1) if rep > 1 else mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # reshape, not view: fused CUDA kernels return a transposed, non-contiguous buffer.
        y = y.reshape(B, H, T, D).transpose(1, 2).reshape(B, T, H * D)
        return self.o_proj(y)

    @staticmethod
    def _attend_caches(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, reads: Sequence[LayerRead]) -> torch.Tensor:
        """Each read's rows of q attending its cache; reads of one memory prefix (requests on
        the same memory version) attend it together, so its keys/values are read once."""
        by_prefix: dict[int, list[int]] = {}
        for index, read in enumerate(reads):
            read.cache.update(read.slots, k[read.rows], v[read.rows])
            if len(reads) > 1:  # one read needs no grouping, nor a compiled step a guard on its prefix's id
                by_prefix.setdefault(id(read.cache.prefix_keys), []).append(index)
        ys: list[torch.Tensor | None] = [None] * len(reads)
        for group in by_prefix.values() if len(reads) > 1 else [[0]]:
            members = [reads[i] for i in group]
            tokens = [(r.cache.keys[:, :, : r.visible], r.cache.values[:, :, : r.visible], r.mask) for r in members]
            shared = members[0].cache
            outputs = attend([q[r.rows] for r in members], shared.prefix_keys, shared.prefix_values, tokens)
            for i, y in zip(group, outputs):
                ys[i] = y
        return torch.cat(ys) if len(ys) > 1 else ys[0]


class MLP(nn.Module):
    def __init__(self, config: MemoryLLMConfig):
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = products(x, self.gate_proj, self.up_proj)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: MemoryLLMConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None, reads=(), n_queries=None) -> torch.Tensor:
        """Outputs for the last `n_queries` positions of x (all when None)."""
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, reads, n_queries)
        if n_queries is not None:
            x = x[:, -n_queries:]
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: MemoryLLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    # [B, L, M] candidate index of each long-term prefix slot (M+), or [B, L, R] recalled writes
    long_term_order: torch.Tensor | None = None


def chunk_size(batch: int, length: int, queries: int = PREFILL_QUERY_ROWS) -> int:
    """Tokens per row in one chunk of a long input: about `queries` queries in all.

    A pass that records gradients (training) takes the whole input at once: each chunk writes
    the cache in place, which autograd saved for the chunks before it."""
    return length if torch.is_grad_enabled() else max(1, queries // batch)


class MemoryLLM(nn.Module):
    """The model plus a default memory pool (`self.pool`); every read/write can name another."""

    def __init__(self, config: MemoryLLMConfig):
        super().__init__()
        self.config = config
        L, d = config.num_hidden_layers, config.hidden_size
        self.model = Backbone(config)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Checkpoints saved with add_bos_embedding false have no such tensor, so nor does the model.
        self.bos_embedding = nn.Parameter(torch.zeros(L, 1, d)) if config.add_bos_embedding else None
        self.new_memory_positional_emb = nn.Parameter(torch.zeros(1, 1, d))
        self.rotary = RotaryEmbedding(config)
        recalls_tokens = config.long_term is not None and config.long_term.ltm_recall == "tokens"
        self.retriever = Retriever(config) if recalls_tokens else None
        # A long-term memory of whole writes matches prompts to writes by these keys; an engine
        # sets keys through its tokenizer (`memagent.model.recall_keys`).
        self.recall_keys: Callable[[torch.Tensor], torch.Tensor] = distinct_ids
        self.recalled_kv = RecalledKV()  # what reads of whole writes projected, for the next reads
        # Whether one-row requests decode in lanes' static steps compiled by inductor (captured
        # on CUDA; on the CPU static steps are otherwise not used): `memagent.model.cuda_graph.Lane`,
        # `memagent.load(compile_decode=True)`.
        self.compile_decode = False
        self.pool = self.new_pool()
        self._fingerprint: str | None = None

    # -- building (the checkpoint formats live in `loading`, which never imports this module) --

    @classmethod
    def from_pretrained(cls, path_or_id, *, device="cpu", dtype=torch.float32) -> "MemoryLLM":
        """Load a released MemoryLLM or M+ checkpoint (a folder or a Hugging Face hub id)."""
        return loading.from_pretrained(cls, path_or_id, device=device, dtype=dtype)

    @classmethod
    def from_base(cls, base, *, num_tokens: int, num_blocks: int, device="cpu", dtype=torch.float32, **options):
        """A fresh memory model on a Llama-family base (folder, hub id or GGUF file); returns (model, tokenizer)."""
        return loading.from_base(
            cls, base, num_tokens=num_tokens, num_blocks=num_blocks, device=device, dtype=dtype, **options
        )

    @classmethod
    def from_hf_model(cls, hf_model, *, num_tokens: int, num_blocks: int, seed: int = 0, **options) -> "MemoryLLM":
        """A memory model sharing a transformers Llama model's weights, with fresh memory parts."""
        return loading.from_hf_model(cls, hf_model, num_tokens=num_tokens, num_blocks=num_blocks, seed=seed, **options)

    @classmethod
    def from_state(cls, config: MemoryLLMConfig, state: dict, *, device="cpu", dtype=torch.float32) -> "MemoryLLM":
        """A model from tensors under the released key names (LoRA PEFT-style; `memory` optional)."""
        return loading.build(cls, config, state, device=device, dtype=dtype)

    @classmethod
    def from_random(cls, config: MemoryLLMConfig, *, seed: int = 0, device="cpu", dtype=torch.float32) -> "MemoryLLM":
        """Random weights (tests, benchmarks); the same seed gives the same weights."""
        return loading.from_random(cls, config, seed=seed, device=device, dtype=dtype)

    # -- the default pool ------------------------------------------------------------------

    @property
    def memory(self) -> torch.Tensor:
        return self.pool.memory

    @property
    def memory_initialized(self) -> bool:
        return self.pool.initialized

    def reset_memory(self) -> None:
        self.pool.reset()

    def _apply(self, fn, recurse=True):
        # The default pool is plain data (each write replaces its tensor), so `.to()`, `.half()`
        # and the like would not reach it: it follows the weights here instead.
        super()._apply(fn, recurse)
        self.pool.to(self.device, self.dtype)
        self.recalled_kv.clear()  # kept in the old device and dtype
        return self

    def train(self, mode: bool = True) -> "MemoryLLM":
        self.recalled_kv.clear()  # training changes the weights they were projected with
        return super().train(mode)

    def new_pool(self, seed: int = 0, memory: torch.Tensor | None = None) -> MemoryPool:
        """An empty pool, or one holding `memory` [L, N, d] (with an empty long-term memory)."""
        c = self.config
        shape = (c.num_hidden_layers, c.num_memory_tokens, c.hidden_size)
        if memory is not None and tuple(memory.shape) != shape:
            raise ValueError(f"memory {tuple(memory.shape)} does not fit this model's pool {shape}")
        initialized = memory is not None
        if memory is None:
            memory = torch.zeros(shape, dtype=self.dtype, device=self.device)
        long_term = new_long_term(c.long_term, c.num_tokens, memory) if c.long_term else None
        return MemoryPool(
            memory, initialized, seed=seed, drop_per_layer=c.drop_memory_per_layer, long_term=long_term
        )

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def fingerprint(self) -> str:
        """Identifies the model a memory pool was written by (config and memory parts)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True, default=str).encode())
            for t in (self.bos_embedding, self.new_memory_positional_emb, self.model.embed_tokens.weight[:4]):
                if t is not None:
                    digest.update(t.detach().float().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def long_term_slots(pool: MemoryPool | None) -> int:
        """M: the long-term tokens a read of `pool` places between bos and memory (0 without M+)."""
        if pool is None or not pool.initialized or pool.long_term is None:
            return 0
        return pool.long_term.slots

    def memory_prefix(self, pool: MemoryPool) -> PrefixKV | None:
        """Keys/values of [bos_embedding, memory] for every layer, computed once per pool version.

        Built layer by layer: only one layer's [1 + N, d] tokens exist at a time, never a copy of
        the whole pool. With M+ the memory's RoPE positions start after the M long-term tokens,
        which each row has in its own slots (see `_recall`). After writes (float32 and float64),
        the previous version's keys/values are updated instead (see `_updated_prefix`).

        A pool with a long-term memory of whole writes is read through the writes it recalls
        alone: its prefix is bos. The pool's last K tokens still give each write its context.
        """
        if not pool.initialized:
            return None
        stale = pool.prefix_kv
        if stale is not None and stale.version == pool.version:
            return stale
        recalls_writes = isinstance(pool.long_term, WriteMemory)
        memory = pool.memory[:, :0] if recalls_writes else pool.memory
        bos = int(self.config.add_bos_embedding)
        positions = torch.arange(memory.shape[1] + bos, device=self.device)[None]
        positions[:, bos:] += self.long_term_slots(pool)
        cos, sin = self.rotary(positions, self.dtype)
        with float_weights(self):  # int8 reads too: the same prefix as the float model's
            incremental = stale is not None and pool.prefix_origin is not None and not recalls_writes
            if incremental and self.dtype in INCREMENTAL_PREFIX_DTYPES:
                keys, values = self._updated_prefix(pool, stale, cos, sin)
            else:
                keys, values = [], []
                for index in range(len(self.model.layers)):
                    k, v = self._memory_kv(index, memory[index], cos, sin, with_bos=bool(bos))
                    keys.append(k)
                    values.append(v)
        pool.prefix_kv = PrefixKV(pool.version, keys, values)
        pool.prefix_origin = None
        return pool.prefix_kv

    def _memory_kv(self, index: int, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, with_bos: bool):
        """Layer `index`'s contiguous keys/values [1, kv_heads, n, D] of memory `tokens` [n, d]
        (after bos_embedding when `with_bos`) at RoPE angles cos/sin [1, n (+ 1), D]."""
        layer = self.model.layers[index]
        # In the model's dtype and on its device, whatever the pool's: caches and queries are.
        tokens = tokens[None].to(self.device, self.dtype)
        if with_bos:
            tokens = torch.cat([self.bos_embedding[index][None], tokens], dim=1)
        k, v = layer.self_attn.project_kv(layer.input_layernorm(tokens), cos, sin)
        # Contiguous [1, kv_heads, P, D]: every decode step streams them through a matmul.
        return k.contiguous(), v.contiguous()

    def _updated_prefix(self, pool: MemoryPool, stale: PrefixKV, cos: torch.Tensor, sin: torch.Tensor):
        """The prefix of the current pool from `stale`, the one before its last writes.

        A write drops tokens and appends new ones, so a surviving token keeps its value and its
        key moves to an earlier RoPE position: its key is rotated by the difference (RoPE
        composes: R(new) = R(new - old) R(old)), taken from the very angles a full computation
        uses, so the two agree to rounding. Only the tokens written since are projected.
        """
        bos = int(self.config.add_bos_embedding)
        keys, values = [], []
        origins = pool.prefix_origin.to(self.device)
        turn = None
        for index, origin in enumerate(origins):
            kept = int((origin >= 0).sum())  # survivors come first, in order (see MemoryPool.write)
            old = bos + origin[:kept]
            if turn is None or not torch.equal(origin, origins[index - 1]):  # one drop for all layers: once
                turn = self._rotation(cos, sin, old, slice(bos, bos + kept))
            k_old, v_old = stale.keys[index], stale.values[index]
            k_new, v_new = self._memory_kv(index, pool.memory[index, kept:], cos[:, bos + kept :], sin[:, bos + kept :], False)
            # Written in place into one new buffer each: the update is bound by memory traffic.
            k, v = torch.empty_like(k_old), torch.empty_like(v_old)
            survivors = slice(bos, bos + kept)
            k[:, :, :bos], v[:, :, :bos] = k_old[:, :, :bos], v_old[:, :, :bos]
            rotate_into(k[:, :, survivors], k_old.index_select(2, old), *turn)
            v[:, :, survivors] = v_old.index_select(2, old)
            k[:, :, bos + kept :], v[:, :, bos + kept :] = k_new, v_new
            keys.append(k)
            values.append(v)
        return keys, values

    def _rotation(self, cos: torch.Tensor, sin: torch.Tensor, old: torch.Tensor, now: slice):
        """cos/sin of the RoPE rotation from the angles at `old` to those at `now`, in float64."""
        cos_old, sin_old = cos[:, old].double(), sin[:, old].double()
        cos_now, sin_now = cos[:, now].double(), sin[:, now].double()
        turn_cos = cos_now * cos_old + sin_now * sin_old
        turn_sin = sin_now * cos_old - cos_now * sin_old
        return turn_cos.to(self.dtype), turn_sin.to(self.dtype)

    def cache_nbytes(self, pool: MemoryPool | None, batch_size: int, max_tokens: int) -> int:
        """Bytes of the token buffers `new_cache` allocates (the shared prefix is the pool's)."""
        c = self.config
        slots = (self.long_term_slots(pool) if pool is not None else 0) + max_tokens
        return 2 * c.num_hidden_layers * batch_size * c.num_key_value_heads * slots * c.head_dim * self.dtype.itemsize

    def new_cache(
        self, pool: MemoryPool | None, batch_size: int, max_tokens: int, *, own_prefix: bool = False, lane: bool = False
    ) -> KVCache:
        """A cache reading `pool`'s memory (None: no memory) for `batch_size` rows of up to
        `max_tokens` prompt and generated tokens; its prefix is the pool's own, not a copy,
        unless `own_prefix`. A `lane` is `batch_size` one-row caches of `pool`'s shape, each
        loaded with its own memory (see `KVCache`)."""
        c = self.config
        return KVCache(
            self.memory_prefix(pool) if pool is not None else None,
            batch_size=batch_size,
            max_tokens=max_tokens,
            num_layers=c.num_hidden_layers,
            kv_heads=c.num_key_value_heads,
            head_dim=c.head_dim,
            dtype=self.dtype,
            device=self.device,
            own_prefix=own_prefix,
            lane=lane,
            long_term_slots=self.long_term_slots(pool),
            long_term=self.long_term_read(pool),
        )

    @staticmethod
    def long_term_read(pool: MemoryPool | None) -> LongTermRead | None:
        """M+: the recall a read of `pool` makes; None without M+ or while nothing is stored."""
        if not MemoryLLM.long_term_slots(pool) or min(pool.long_term.sizes()) == 0:
            return None
        return LongTermRead(pool.long_term)

    @staticmethod
    def shares_prefill(pool: MemoryPool | None) -> bool:
        """Whether reads of `pool` may prefill with others' (`prefill_shared`): all but M+'s,
        whose recall reads each layer's input over the whole prompt."""
        return pool is None or pool.long_term is None or isinstance(pool.long_term, WriteMemory)

    def read(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        caches: Sequence[tuple[KVCache, torch.Tensor]],
        recall: Callable[[int, torch.Tensor], None] | None = None,
        first_slots: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, d] for tokens at RoPE `positions` [B, T].

        `caches` pairs each cache with the slots [T] its tokens fill; the rows of `input_ids` are
        the caches' rows in order, so requests reading different memories share one forward
        pass. Long inputs go through each layer in chunks of about PREFILL_QUERY_ROWS queries
        (rows x tokens), which bounds the attention scores and activations of one step. Chunks
        run layer by layer, not model by model, so `recall(i, x)` (M+), run before layer i,
        sees that layer's input x for the whole prompt, as M+'s retrieval needs.

        `first_slots` (a prefill, each cache's slots consecutive from its first): no slot after
        a chunk's last holds anything yet, so its attention reads only the slots up to that one.
        """
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        bounds = [0]
        for cache, _ in caches:
            bounds.append(bounds[-1] + cache.batch_size)
        rows = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
        # Per cache: dynamic RoPE scales with the cache's length, which differs between requests.
        rotary = [self.rotary(positions[r], x.dtype, seq_len=c.prefix_length + c.max_tokens) for (c, _), r in zip(caches, rows)]
        cos, sin = (torch.cat(t) if len(t) > 1 else t[0] for t in zip(*rotary))
        size = chunk_size(B, T)
        parts = [slice(start, min(start + size, T)) for start in range(0, T, size)]
        # One mask per cache and chunk, shared by every layer.
        rep = self.config.num_attention_heads // self.config.num_key_value_heads
        firsts = first_slots or [None] * len(caches)
        visible = [[None if first is None else first + p.stop for first in firsts] for p in parts]
        masks = [  # slots [T], or a lane's [B, T]: chunks cut the last axis
            [
                (token_mask(c.attention_mask(s[..., p], end), rep, x.dtype), s[..., p])
                for (c, s), end in zip(caches, ends)
            ]
            for p, ends in zip(parts, visible)
        ]
        for i, layer in enumerate(self.model.layers):
            if recall is not None:
                recall(i, x)
            out = []
            for p, part, ends in zip(parts, masks, visible):
                reads = [
                    LayerRead(c.layers[i], r, s, m, end) for (c, _), r, (m, s), end in zip(caches, rows, part, ends)
                ]
                out.append(layer(x[:, p], cos[:, p], sin[:, p], reads=reads))
            x = torch.cat(out, dim=1) if len(out) > 1 else out[0]
        return self.model.norm(x)

    def _recall(self, cache: KVCache, valid: torch.Tensor, i: int, x: torch.Tensor) -> None:
        """Put the long-term tokens layer i recalls for the prompt (layer input `x`, `valid`
        [B, T]) in each row's long-term region, at RoPE positions right after bos; a recall of
        fewer than M tokens (whole writes, while fewer are held) takes the region's last slots."""
        read, layer = cache.long_term, self.model.layers[i]
        store = read.store
        project = functools.partial(self._project_long_term, layer)
        if isinstance(store, WriteMemory):
            if torch.is_inference_mode_enabled() and not self.training:  # kept keys/values serve
                k, v = self.recalled_kv.layer(store, i, read.chosen[0], project, x.device)
            else:
                k, v = project(store.gather(i, read.chosen[0], x.device))
        else:
            scores = None
            if store.scored(i):
                normed = layer.input_layernorm(x)
                scores = torch.cat([self.retriever.scores(i, normed, valid, rows.keys) for rows in store.candidates(i)], 1)
            chosen = store.choose(i, scores, x.shape[0])
            read.chosen.append(chosen)
            k, v = project(store.tokens(i, chosen))
        first = int(self.config.add_bos_embedding)
        cos, sin = self._rope(first + store.slots, x.dtype)
        region = slice(store.slots - k.shape[2], store.slots)
        k = apply_rope(k, cos[:, first:][:, region], sin[:, first:][:, region])
        cache.layers[i].keys[:, :, region] = k
        cache.layers[i].values[:, :, region] = v

    def _project_long_term(self, layer: DecoderLayer, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (before RoPE) and values of long-term tokens [n, K, d] as `layer` reads them."""
        return layer.self_attn.unrotated_kv(layer.input_layernorm(tokens.to(device=self.device, dtype=self.dtype)))

    @torch.inference_mode()
    def keep_last_write(self, pool: MemoryPool) -> None:
        """Project the keys/values of `pool`'s newest whole write for the reads to come
        (`recalled_kv`), so the first read after a write, which most likely recalls it, need not."""
        store = pool.long_term
        if not isinstance(store, WriteMemory) or not store.num_writes or self.training:
            return
        newest = torch.tensor([[store.num_writes - 1]])
        for i, layer in enumerate(self.model.layers):
            self.recalled_kv.layer(store, i, newest, functools.partial(self._project_long_term, layer), self.device)

    def _choose_writes(self, cache: KVCache, input_ids: torch.Tensor, valid: torch.Tensor) -> None:
        """Whole writes: choose each row's writes from its prompt (unless chosen ahead), once
        for every layer, and hide the region's slots they leave empty."""
        read = cache.long_term
        chosen = read.ahead.of(read.store) if read.ahead is not None else None
        if chosen is None:
            chosen = read.store.choose([self.recall_keys(ids[real]) for ids, real in zip(input_ids, valid)])
        read.chosen = [chosen] * len(cache.layers)
        empty = read.store.slots - chosen.shape[1] * read.store.tokens_per_write
        cache.key_valid[:, :empty] = False

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run a left-padded prompt through the cache; returns its hidden states [B, T, d].

        With M+ each layer first recalls its long-term tokens. Leaves the cache's decode cursor
        just after the prompt.
        """
        chunks = list(self.prefill_chunks(input_ids, attention_mask, cache))
        return torch.cat(chunks, dim=1) if len(chunks) > 1 else chunks[0]

    def prefill_chunks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: KVCache,
        queries: Callable[[], int] = lambda: PREFILL_QUERY_ROWS,
    ) -> Iterator[torch.Tensor]:
        """`prefill` one chunk at a time, through every layer: yields each chunk's hidden states,
        so a caller can let other work run between them. A chunk holds about `queries()` queries
        (asked before each chunk; at most PREFILL_QUERY_ROWS). With M+ the prompt is one chunk:
        each layer's recall reads the whole prompt.
        """
        B, T = input_ids.shape
        slots, positions, recall = self._begin_prompt(input_ids, attention_mask, cache, T)
        first = cache.long_term_slots
        part = slice(0, 0)
        while part.stop < T:
            size = T if recall is not None else chunk_size(B, T, min(queries(), PREFILL_QUERY_ROWS))
            part = slice(part.stop, min(part.stop + size, T))
            ids = input_ids[:, part]
            yield self.read(ids, positions[:, part], [(cache, slots[part])], recall, [first + part.start])

    def prefill_shared(self, prompts: Sequence[tuple[torch.Tensor, torch.Tensor, KVCache]]) -> torch.Tensor:
        """Prefill several requests' prompts (left-padded ids and mask [B_i, T_i], each with its
        own cache) in one forward pass; returns the hidden states of their last tokens [sum B_i, d].

        Each prompt is padded on the right to the longest. The padding fills slots that are
        marked empty, which decoding overwrites next, and no real token attends it, so each
        request gets what a prefill of its own gives. A cache needs room for it: the longest
        prompt must fit in its `max_tokens`. Not for M+, whose recall reads the prompt.
        """
        T = max(ids.shape[1] for ids, _, _ in prompts)
        ids, positions, reads, recalls, firsts = [], [], [], [], []
        for prompt_ids, mask, cache in prompts:
            if T > cache.max_tokens:
                raise ValueError(f"a prompt of {T} tokens does not fit a cache of {cache.max_tokens}")
            pad = (0, T - prompt_ids.shape[1])
            padded = F.pad(prompt_ids, pad), F.pad(mask, pad)
            slots, prompt_positions, recall = self._begin_prompt(*padded, cache, prompt_ids.shape[1])
            ids.append(padded[0])
            positions.append(prompt_positions)
            reads.append((cache, slots))
            recalls.append(recall)
            firsts.append(cache.long_term_slots)
        bounds = [0, *itertools.accumulate(p.shape[0] for p in ids)]
        rows = [slice(a, b) for a, b in zip(bounds, bounds[1:])]

        def recall(i: int, x: torch.Tensor) -> None:
            for row, each in zip(rows, recalls):
                if each is not None:
                    each(i, x[row])

        hidden = self.read(torch.cat(ids), torch.cat(positions), reads, recall, firsts)
        return torch.cat([hidden[row, prompt_ids.shape[1] - 1] for row, (prompt_ids, _, _) in zip(rows, prompts)])

    def prefill_padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache, length: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, V] of the token after a prompt: the first `length` (a [] tensor on the
        device) of the T columns of `input_ids`, left-padded as `prefill` takes them; the columns
        after it are padding (as in `prefill_shared`). Nothing is read back to the host, so one
        captured graph serves every prompt of up to T tokens. Not for a read that recalls (M+,
        whole writes): its recall runs on the host."""
        slots, positions, recall = self._begin_prompt(input_ids, attention_mask, cache, length)
        if recall is not None:
            raise ValueError("a read that recalls long-term tokens cannot prefill padded")
        hidden = self.read(input_ids, positions, [(cache, slots)], first_slots=[cache.long_term_slots])
        return self.lm_head(hidden.index_select(1, (length - 1).view(1))[:, 0])

    def _begin_prompt(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache, length: int | torch.Tensor
    ):
        """Mark a prompt's token slots in `cache`, choose its recalled writes, and leave the
        decode cursor after its first `length` tokens (the rest: padding on the right). Returns
        the slots [T], the RoPE positions [B, T] and the recall to run before each layer (M+,
        whole writes) or None."""
        T = input_ids.shape[1]
        valid = attention_mask.bool()
        first = cache.long_term_slots  # the prompt's first token slot
        slots = torch.arange(first, first + T, device=input_ids.device)
        cache.mark(slots, valid)
        # Padding on the right repeats the last real position: the cursor goes on from there.
        positions = cache.prefix_length + (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        cache.next_slot.fill_(first + length)
        cache.next_position.copy_(positions[:, -1:] + 1)
        if cache.long_term is None:
            return slots, positions, None
        if isinstance(cache.long_term.store, WriteMemory):
            self._choose_writes(cache, input_ids, valid)
        return slots, positions, functools.partial(self._recall, cache, valid)

    def decode_step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [B, V] for one new token per row [B, 1], at the cache's cursor, which advances.

        Nothing here reads a tensor back to the host: the step can be captured or compiled.
        """
        return self.decode_rows(tokens, [cache])

    def decode_rows(self, tokens: torch.Tensor, caches: Sequence[KVCache]) -> torch.Tensor:
        """`decode_step` for the rows of several caches at once (each request reading its own
        memory): tokens [R, 1] are the caches' rows in order; logits [R, V]."""
        slots = [cache.write_slots() for cache in caches]
        for cache, at in zip(caches, slots):
            cache.mark(at, torch.ones(cache.batch_size, 1, dtype=torch.bool, device=tokens.device))
        positions = torch.cat([c.next_position for c in caches]) if len(caches) > 1 else caches[0].next_position
        hidden = self.read(tokens, positions, list(zip(caches, slots)))
        for cache in caches:
            cache.advance()
        return self.lm_head(hidden[:, -1])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pool: MemoryPool | None = None,
    ) -> CausalLMOutput:
        """Logits [B, T, V] of left-padded `input_ids`, reading the memory of `pool`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cache = self.new_cache(pool or self.pool, *input_ids.shape)
        logits = self.lm_head(self.prefill(input_ids, attention_mask, cache))
        order = torch.stack(cache.long_term.chosen, 1) if cache.long_term is not None else None
        return CausalLMOutput(logits, order)

    def text_states(self, input_ids: torch.Tensor, depth: int) -> torch.Tensor:
        """The hidden states [B, T, d] after the first `depth` layers of texts `input_ids`
        [B, T] (padded on the right, which no real token attends), read with no memory."""
        if not 0 < depth <= self.config.num_hidden_layers:
            raise ValueError(f"depth must be 1 to {self.config.num_hidden_layers} layers, got {depth}")
        x = self.model.embed_tokens(input_ids)
        cos, sin = self._rope(x.shape[1], x.dtype)
        mask = self._causal(x.shape[1], x.shape[1])
        for layer in self.model.layers[:depth]:
            x = layer(x, cos, sin, mask)
        return x

    # -- writing ---------------------------------------------------------------------------

    def new_memory(self, input_ids: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        """The memory tokens [L, n, d] that writing `input_ids` [1, T] produces.

        `memory` is the current pool [L, N, d], or None for an empty pool (the first write),
        where n = min(T, K); otherwise n = K.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"a write takes one sequence of shape [1, T], got {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise ValueError("a write needs at least one token")
        with writing(self):
            if memory is None:
                return self._first_write(input_ids)
            return self._write(input_ids, memory)

    def _positional(self, length: int) -> torch.Tensor:
        """new_memory_positional_emb on the last K of `length` positions, zero elsewhere."""
        on = torch.arange(length, device=self.device) >= length - self.config.num_tokens
        return on[None, :, None].to(self.dtype) * self.new_memory_positional_emb

    def _causal(self, n_queries: int, n_keys: int) -> torch.Tensor:
        queries = torch.arange(n_keys - n_queries, n_keys, device=self.device)
        return (torch.arange(n_keys, device=self.device)[None] <= queries[:, None])[None, None]

    def _rope(self, length: int, dtype: torch.dtype):
        return self.rotary(torch.arange(length, device=self.device)[None], dtype)

    def _first_write(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        T, n = x.shape[1], min(x.shape[1], self.config.num_tokens)
        cos, sin = self._rope(T, x.dtype)
        mask, positional = self._causal(T, T), self._positional(T)
        new = []
        for layer in self.model.layers:
            x = layer(x + positional, cos, sin, mask)
            new.append(x[0, -n:])
        # The reference adds the positional embedding in place to each layer's output, which
        # its stored new memory shares: every layer but the last keeps output + embedding.
        last = len(new) - 1
        return torch.stack([t + positional[0, -n:] if i < last else t for i, t in enumerate(new)])

    def _write(self, input_ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        K = self.config.num_tokens
        x = self.model.embed_tokens(input_ids)
        T = x.shape[1]
        bos = [self.bos_embedding.to(x.dtype)] if self.config.add_bos_embedding else []
        context = torch.cat(bos + [memory[:, -K:].to(x.dtype)], dim=1)  # [L, 1 + K, d]
        S, Q = context.shape[1] + T, max(T, K)
        cos, sin = self._rope(S, x.dtype)
        mask, positional = self._causal(Q, S), self._positional(S)
        new = []
        for layer, prefix in zip(self.model.layers, context):
            out = layer(torch.cat([prefix[None], x], dim=1) + positional, cos, sin, mask, n_queries=Q)
            new.append(out[0, -K:])
            x = out[:, -T:]
        return torch.stack(new)

    def inject(self, input_ids: torch.Tensor, update: bool = True, pool: MemoryPool | None = None) -> torch.Tensor:
        """Write `input_ids` [1, T] (or [T]) into `pool`; returns the new memory tokens [L, n, d].

        With update=False the pool is left as it was.
        """
        pool = pool or self.pool
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        new = self.new_memory(input_ids.to(self.device), pool.memory if pool.initialized else None)
        if update:
            dropped = pool.write(new)
            if isinstance(pool.long_term, WriteMemory):
                pool.long_term.write(new, self.recall_keys(input_ids), input_ids)
            elif pool.long_term is not None:
                pool.long_term.write(dropped, self._retriever_keys(dropped), new.shape[1])
        return new

    def _retriever_keys(self, dropped: Dropped | None) -> torch.Tensor | None:
        """M+: retriever keys [L, K, s] of the tokens a write dropped, computed as they leave the pool."""
        if dropped is None:
            return None
        layers = zip(self.model.layers, dropped.tokens.to(self.dtype))
        return torch.stack([self.retriever.keys(i, layer.input_layernorm(t)) for i, (layer, t) in enumerate(layers)])

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, **options) -> torch.Tensor:
        """New token ids [B, n] after `input_ids`; see `memagent.model.generation.generate`."""
        return generation.generate(self, input_ids, max_new_tokens=max_new_tokens, **options)
