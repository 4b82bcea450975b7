"""Decode steps captured in CUDA graphs, kept per (batch, length bucket) and reused across requests.

Eager decoding of a large model is bound by kernel launches on a slow host CPU; a replayed graph
launches the whole step at once. A graph is bound to the buffers it was captured with, so each
one owns a static cache (its own copy of a memory prefix, token slots, cursor) and a token
input. Capturing costs warm-up steps and an instantiation, so it happens once per bucket, not
per request: a request borrows a free step of its bucket, loads its memory's prefix into it
(a device copy, skipped when the step last served the same memory version), prefills, replays,
and gives the step back. Nothing here frees cached device memory.

A request's own step also prefills its prompt when the read recalls nothing on the host: the
prompt padded to a length bucket goes through a graph captured per (step, bucket)
(`StaticPrefill`), so a short prompt's first token is not bound by kernel launches either.

Requests decoding in one batch (`DecodeBatch`) step over several static caches at once
(`DecodeGraphs.together`). One-row requests take rows of a lane (`Lane`): however many of its
rows step together, on whatever memories, one graph over the lane replays, with one attention
call per layer. Other sets of static steps get a step of their own over their caches, captured
the second time they step together.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from memagent.model import quantized

if TYPE_CHECKING:
    from memagent.model.kv_cache import KVCache
    from memagent.model.memory_pool import MemoryPool
    from memagent.model.memoryllm import MemoryLLM

WARMUP_STEPS = 2
MIN_BUCKET = 64
# Prompts prefill through static prefills (`StaticPrefill`) by length bucket, the next power of
# two from MIN_PREFILL_BUCKET; longer ones, bound by the device rather than by launches, eagerly.
MIN_PREFILL_BUCKET = 16
MAX_PREFILL_TOKENS = 512
MAX_STEPS = 8  # static steps kept (all buckets together); beyond it, the least recently used idle one goes
# A lane: one-row requests (chat turns, questions) of up to LANE_TOKENS tokens, up to
# LANE_ROWS of them at once, each on its own memory: LANE_ROWS copies of a memory prefix
# allocated with the lane (13.4 GB at the 8B shape in bf16, 0.4 GB for smollm2-135m's 1,025 in float32).
LANE_ROWS = 8
LANE_TOKENS = 512
# A lane's step computes every row; the rows not taking part cost little on a GPU (reading
# their prefix), but on the CPU as much as the others: there, fewer rows step their own caches.
UNCAPTURED_LANE_MIN_ROWS = LANE_ROWS // 2
# Captured steps over several static caches, least recently used out first: a batch whose
# readers fall behind by turns alternates between a few sets of members.
MAX_JOINT_STEPS = 16


def length_bucket(tokens: int) -> int:
    """Token slots of the bucket holding `tokens` (prompt + answer): the next power of two."""
    return max(MIN_BUCKET, 1 << (tokens - 1).bit_length())


class StaticDecodeStep:
    """A decode step over caches that outlive requests; captured in a CUDA graph if `capture`.

    One cache is a request's own step; several are the step of requests decoding together
    (`MemoryLLM.decode_rows`), whose rows are the caches' in order.
    """

    def __init__(
        self,
        model: MemoryLLM,
        caches: Sequence[KVCache],
        capture: bool,
        number: int = 0,
        warmup: int = WARMUP_STEPS,
        decode: Callable[[torch.Tensor, Sequence[KVCache]], torch.Tensor] | None = None,
        lane: Lane | None = None,
        row: int = 0,
        graphs: DecodeGraphs | None = None,
    ):
        self.model = model
        self.graphs = graphs  # whose static prefills a request's own step prefills through
        self.caches = list(caches)
        self.decode = decode or model.decode_rows  # `MemoryLLM.decode_rows`, or it compiled
        self.number = number  # a request's own step's place among its DecodeGraphs' steps
        self.lane, self.row = lane, row  # the lane whose row `row` this step decodes, if any
        rows = sum(cache.batch_size for cache in self.caches)
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.prefills: dict[int, StaticPrefill] = {}  # by prompt length bucket
        if capture:
            self._capture(warmup)

    @property
    def cache(self) -> KVCache:
        """A request's own step's cache."""
        return self.caches[0]

    def _step(self) -> torch.Tensor:
        return self.decode(self.tokens, self.caches)

    def _capture(self, warmup: int) -> None:
        self.graph, self.logits = captured(self._step, self.caches, warmup)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [R, V] after `tokens` [R, 1]; the logits tensor is overwritten by the next call."""
        self.tokens.copy_(tokens)
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Logits [R, V] of the token after a request's prompt, prefilled into this request's
        own cache by a `StaticPrefill` of the prompt's length bucket (made on first use); None
        where none applies: prefills are not static (`DecodeGraphs.static_prefill`), the step
        spans several requests, the read recalls long-term tokens on the host, or the padded
        prompt would not fit the cache."""
        graphs, cache = self.graphs, self.cache
        if graphs is None or not graphs.static_prefill or len(self.caches) > 1 or cache.long_term is not None:
            return None
        bucket = max(MIN_PREFILL_BUCKET, 1 << (input_ids.shape[1] - 1).bit_length())
        if bucket > min(cache.max_tokens, MAX_PREFILL_TOKENS):
            return None
        prefill = self.prefills.get(bucket)
        if prefill is None:
            prefill = self.prefills[bucket] = StaticPrefill(self.model, cache, bucket, graphs)
        return prefill(input_ids, attention_mask)


def captured(
    run: Callable[[], torch.Tensor], caches: Sequence[KVCache], warmup: int, pool: tuple | None = None
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """`run` captured in a CUDA graph (in memory `pool`, default its own), and its output."""
    device = caches[0].key_valid.device
    # The caches may be live (requests mid-answer): warm-up steps write their keys/values at
    # the cursor, which the next real step overwrites, and the cursor and validity they move
    # are put back. A capture itself runs nothing.
    cursors = [(c.key_valid.clone(), c.next_slot.clone(), c.next_position.clone()) for c in caches]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(warmup):
            run()
        for cache, (valid, slot, position) in zip(caches, cursors):
            cache.key_valid.copy_(valid)
            cache.next_slot.copy_(slot)
            cache.next_position.copy_(position)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: allocations by other threads during capture are theirs, not errors.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), torch.inference_mode():
        output = run()
    return graph, output


class StaticPrefill:
    """Prefills of up to `bucket` tokens into one static cache (`MemoryLLM.prefill_padded`), in a
    CUDA graph captured on first use when `graphs` capture.

    A short prompt's eager prefill is bound by kernel launches on a slow host (a 64-token
    prompt at the 8B shape ran 10.7 ms of kernels in 35-58 ms); replayed, it launches at once.
    A model's prefill graphs share one memory pool: they replay one at a time, and each one's
    logits are copied out before the next can reuse the pool's memory.
    """

    def __init__(self, model: MemoryLLM, cache: KVCache, bucket: int, graphs: DecodeGraphs):
        self.model, self.cache, self.graphs = model, cache, graphs
        rows = cache.batch_size
        self.ids = torch.zeros(rows, bucket, dtype=torch.long, device=model.device)
        self.mask = torch.zeros_like(self.ids)
        self.length = torch.zeros((), dtype=torch.long, device=model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def _run(self) -> torch.Tensor:
        return self.model.prefill_padded(self.ids, self.mask, self.cache, self.length)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        self.ids[:, :T].copy_(input_ids)
        self.ids[:, T:] = 0
        self.mask[:, :T].copy_(attention_mask)
        self.mask[:, T:] = 0
        self.length.fill_(T)
        if not self.graphs.capture:
            return self._run()
        if self.graph is None:
            with self.graphs.lock:
                self.graph, self.logits = captured(self._run, [self.cache], warmup=1, pool=self.graphs.prefill_pool)
                self.graphs.prefill_captures += 1
        self.graph.replay()
        return self.logits.clone()


class Lane:
    """LANE_ROWS one-row static steps reading one prefix shape, in one allocation (a lane
    `KVCache`): each row is a request's own step, and rows decoding together step in one
    forward pass over the whole lane (one attention call per layer, whatever memory each row
    reads), captured once, whichever rows take part.

    With the model's `compile_decode`, both steps (a row's, the lane's) are compiled by
    inductor before they are captured, which fuses their small kernels (norms, RoPE, the
    attention merge): at the 8B shape on an H200, batch 1 went from 9.1 to 5.9 ms a step. Each
    compiles once, on first use (about 50 s there); their shapes never change.
    """

    def __init__(self, graphs: DecodeGraphs, pool: MemoryPool):
        self.graphs = graphs
        model = graphs.model
        self.decode_rows = model.decode_rows
        if model.compile_decode:
            options = quantized.COMPILE_OPTIONS if quantized.is_quantized(model) else None
            self.decode_rows = torch.compile(model.decode_rows, fullgraph=True, dynamic=False, options=options)
        self.cache = model.new_cache(pool, LANE_ROWS, LANE_TOKENS, lane=True)
        self.rows: list[StaticDecodeStep | None] = [None] * LANE_ROWS  # each row's own step, made on first use
        self.free = list(range(LANE_ROWS))
        self.step: StaticDecodeStep | None = None  # over every row, made when two rows first step together
        self._sets: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # rows: (active flags, index)

    def take(self) -> StaticDecodeStep | None:
        """A free row's step (the lowest row), or None."""
        if not self.free:
            return None
        row = self.free.pop(0)
        if self.rows[row] is None:
            self.graphs.made += 1
            self.rows[row] = StaticDecodeStep(
                self.graphs.model, [self.cache.row(row)], self.graphs.capture, self.graphs.made,
                decode=self.decode_rows, lane=self, row=row, graphs=self.graphs,
            )
            self.graphs.captures += self.graphs.capture
        return self.rows[row]

    def give(self, step: StaticDecodeStep) -> None:
        self.free = sorted(self.free + [step.row])

    def decode(self, rows: tuple[int, ...], tokens: torch.Tensor) -> torch.Tensor:
        """Logits [R, V] of `rows` after their `tokens` [R, 1]; the lane's other rows stand still."""
        if self.step is None:
            self.step = StaticDecodeStep(self.graphs.model, [self.cache], self.graphs.capture, decode=self.decode_rows)
            self.graphs.captures += self.graphs.capture
        if rows not in self._sets:
            flags = torch.zeros(LANE_ROWS, dtype=torch.long)
            flags[list(rows)] = 1
            self._sets[rows] = flags.to(self.cache.active.device), torch.tensor(rows, device=tokens.device)
        active, index = self._sets[rows]
        self.cache.active.copy_(active)
        return self.step(self.step.tokens.index_copy(0, index, tokens)).index_select(0, index)


class DecodeGraphs:
    """The static decode steps of one model: a lane per prefix shape for one-row requests of up
    to LANE_TOKENS tokens (kept for the model's life: a model has one or two prefix shapes), and
    at most `max_steps` others by (batch, length bucket, prefix length, long-term slots)."""

    def __init__(
        self,
        model: MemoryLLM,
        *,
        capture: bool | None = None,
        max_steps: int = MAX_STEPS,
        static_prefill: bool | None = None,
    ):
        """`static_prefill` (default: `capture`): requests' prompts prefill through their steps'
        `StaticPrefill`s, captured if `capture`."""
        self.model = model
        self.where = (model.device, model.dtype)  # the steps' buffers stay where they were made
        self.capture = model.device.type == "cuda" if capture is None else capture
        self.static_prefill = self.capture if static_prefill is None else static_prefill
        self._prefill_pool: tuple | None = None
        self.max_steps = max_steps
        self.idle: dict[tuple, list[StaticDecodeStep]] = {}
        self.busy = 0
        self.made = 0
        self.captures = 0  # decode steps captured
        self.prefill_captures = 0
        self.order: list[StaticDecodeStep] = []  # idle steps, least recently used first
        self.lanes: dict[tuple, Lane] = {}  # by (prefix length, long-term slots)
        # Steps over several static steps' caches, by those steps in row order (`together`).
        self.joint: OrderedDict[tuple[StaticDecodeStep, ...], StaticDecodeStep] = OrderedDict()
        self._seen_together: OrderedDict[tuple[StaticDecodeStep, ...], None] = OrderedDict()  # once, not yet captured
        self.lock = threading.Lock()  # guards the lists and serializes captures

    @property
    def prefill_pool(self) -> tuple:
        """The memory pool that the static prefills' graphs share (see `StaticPrefill`)."""
        if self._prefill_pool is None:
            self._prefill_pool = torch.cuda.graph_pool_handle()
        return self._prefill_pool

    @classmethod
    def of(cls, model: MemoryLLM) -> "DecodeGraphs":
        """The model's shared steps (rebuilt if the model moved to another device or dtype)."""
        graphs = getattr(model, "_decode_graphs", None)
        if graphs is None or graphs.where != (model.device, model.dtype):
            graphs = model._decode_graphs = cls(model)
        return graphs

    def _key(self, pool: MemoryPool | None, batch: int, tokens: int) -> tuple:
        prefix = self.model.memory_prefix(pool) if pool is not None else None
        length = length_bucket(tokens)
        if self.model.rotary.kind == "dynamic":
            length = tokens  # dynamic RoPE scales with the cache length, which a bucket would change
        return batch, length, prefix.keys[0].shape[2] if prefix else 0, self.model.long_term_slots(pool)

    @contextlib.contextmanager
    def borrow(self, pool: MemoryPool | None, batch: int, tokens: int) -> Iterator[StaticDecodeStep | None]:
        """A step whose cache reads `pool` with room for `tokens`, reset; None if all are busy."""
        key = self._key(pool, batch, tokens)
        step = self._take(key, pool)
        if step is None:
            yield None
            return
        try:
            prefix = self.model.memory_prefix(pool) if pool is not None else None
            if prefix is not None:
                step.cache.load_prefix(prefix)
            step.cache.reset(self.model.long_term_read(pool))
            yield step
        finally:
            with self.lock:
                if step.lane is not None:
                    step.lane.give(step)
                else:
                    self.busy -= 1
                    self.idle.setdefault(key, []).append(step)
                    self.order.append(step)

    def _take(self, key: tuple, pool: MemoryPool | None) -> StaticDecodeStep | None:
        batch, length, prefix, _ = key
        with self.lock:
            if batch == 1 and prefix and length <= LANE_TOKENS and self.model.rotary.kind != "dynamic":
                lane = self.lanes.get(key[2:])
                if lane is None:
                    lane = self.lanes[key[2:]] = Lane(self, pool)
                step = lane.take()
                if step is not None:
                    return step
            if self.idle.get(key):
                step = self.idle[key].pop()
                self.order.remove(step)
                self.busy += 1
                return step
            while self.order and len(self.order) + self.busy >= self.max_steps:
                old = self.order.pop(0)
                for steps in self.idle.values():
                    if old in steps:
                        steps.remove(old)
                for together in (self.joint, self._seen_together):
                    for steps in [steps for steps in together if old in steps]:
                        del together[steps]
            if self.busy >= self.max_steps:
                return None
            cache = self.model.new_cache(pool, batch, length, own_prefix=True)
            self.made += 1
            step = StaticDecodeStep(self.model, [cache], self.capture, self.made, graphs=self)
            self.captures += self.capture
            self.busy += 1
            return step

    @property
    def steps(self) -> int:
        """Static steps kept: lanes' rows in use so far, and the others."""
        with self.lock:
            rows = sum(step is not None for lane in self.lanes.values() for step in lane.rows)
            return len(self.order) + self.busy + rows

    def together(self, steps: Sequence[StaticDecodeStep]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The step over `steps`' caches together (logits [R, V] of their rows in order after
        tokens [R, 1]; callers keep the order by `number`), under the model's lock.

        One step is itself; rows of one lane, the lane's (uncaptured, from UNCAPTURED_LANE_MIN_ROWS
        rows; fewer step their own caches, eagerly). Other sets get a step of their own
        (captured, on CUDA) the second time they step together: a set seen once (requests
        joining one by one) would capture for nothing. None until then; the caller steps them
        eagerly.
        """
        steps = tuple(steps)
        if len(steps) == 1:
            return steps[0]
        lane = steps[0].lane
        if lane is not None and all(step.lane is lane for step in steps):
            if not self.capture and len(steps) < UNCAPTURED_LANE_MIN_ROWS:
                return None
            return functools.partial(lane.decode, tuple(step.row for step in steps))
        with self.lock:
            joint = self.joint.get(steps)
            if joint is not None:
                self.joint.move_to_end(steps)
                return joint
            if steps not in self._seen_together:
                self._seen_together[steps] = None
                while len(self._seen_together) > MAX_JOINT_STEPS:
                    self._seen_together.popitem(last=False)
                return None
            del self._seen_together[steps]
            # One warm-up step: these caches have just run this step eagerly.
            joint = StaticDecodeStep(self.model, [s.cache for s in steps], self.capture, warmup=1)
            self.joint[steps] = joint
            self.captures += self.capture
            while len(self.joint) > MAX_JOINT_STEPS:
                self.joint.popitem(last=False)
            return joint
