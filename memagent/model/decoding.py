"""Decoding many requests at once: each request's rows read their own memory, all rows share
one forward pass per step (continuous batching).

A `Decoding` is one request: its prompt, its cache (over its memory's prefix), how it samples,
and the tokens decoded for it that its reader has not taken yet. A `DecodeBatch` steps every
joined request together: requests join after their prefill and leave when they end or are
closed, between steps. Rows never see each other (attention runs per cache; only the
projections are shared), and each request samples with its own generator, so a request's
tokens are the same alone or in a batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from memagent.model.attention import PREFILL_QUERY_ROWS
from memagent.model.cuda_graph import DecodeGraphs
from memagent.sampling import SamplingParams

if TYPE_CHECKING:
    from memagent.model.memory_pool import MemoryPool
    from memagent.model.memoryllm import MemoryLLM
    from memagent.model.write_memory import Recalled

GRAPH_MIN_NEW_TOKENS = 8  # shorter answers decode eagerly: a capture or prefix copy would not pay off
EOS_CHECK_EVERY = 8
# Tokens a request may have decoded but not yet taken; beyond them it sits steps out, so a slow
# reader costs the batch no work and holds no unbounded buffer.
MAX_AHEAD = 4
# Queries per prefill chunk on the CPU while other requests may wait, each chunk being a step
# they wait behind: on the default model a 32-query chunk at 4,000 tokens of context takes
# 0.3-0.4 s (256: 1.4-1.8 s), but each chunk reads all weights once, so a whole prompt takes
# about 1.8x as long; a prompt that nobody may wait for goes in the model's larger chunks.
# Accelerators always do.
CPU_PREFILL_QUERIES = 32
# Prompts of at most this many queries (rows x tokens: questions, chat turns) that wait to
# start at the same time prefill in one forward pass, up to PREFILL_QUERY_ROWS queries in all:
# one pass reads the weights once for all of them (see `DecodeBatch.prefill`).
SHARED_PREFILL_QUERIES = 128


class TokenFilter(Protocol):
    """Which tokens each row may choose next, told every token chosen; on the logits' device,
    without reading back to the host."""

    def to(self, device: torch.device) -> TokenFilter: ...

    def restrict(self, logits: torch.Tensor, produced: int, eos: torch.Tensor) -> torch.Tensor:
        """`logits` [B, V] with -inf where a row may not go after `produced` tokens."""
        ...

    def advance(self, token: torch.Tensor, produced: int) -> None: ...


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_id: int):
    """Move each row's real tokens to the right end, whatever side the caller padded."""
    if attention_mask is None:
        return input_ids, torch.ones_like(input_ids)
    mask = attention_mask.bool()
    if (mask.sum(1) == 0).any():
        raise ValueError("every prompt needs at least one token")
    # A stable sort of the mask moves padding (False) first and keeps the tokens' order.
    order = torch.sort(mask.int(), dim=1, stable=True).indices
    ids = torch.gather(input_ids, 1, order)
    aligned = torch.gather(mask, 1, order)
    return ids.masked_fill(~aligned, pad_id), aligned.long()


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row from logits [B, V], on the logits' device (no host sync)."""
    if not params.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the ones before it already cover top_p; the first always stays.
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= params.top_p
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def eos_check_interval(device: torch.device) -> int:
    """Steps between checks that every row has ended: each check waits for the device."""
    return 1 if device.type == "cpu" else EOS_CHECK_EVERY


class Decoding:
    """One request's rows: prefilled by `prefill`, then decoded by a `DecodeBatch`.

    Decoding ends after max_new_tokens or once every row has produced one of `eos_token_ids`,
    which is checked every `eos_check_every` tokens (each check waits for the device; default:
    every token on the CPU, every EOS_CHECK_EVERY on an accelerator), so up to that many
    all-pad tokens may follow the last EOS. Rows that ended repeat pad.

    On CUDA, on a model that compiles its decode steps, or with `graphs` given, answers of at
    least GRAPH_MIN_NEW_TOKENS tokens borrow a static step from `graphs` (default: the model's
    shared steps, captured in CUDA graphs on CUDA) unless `cuda_graph` is False; the step
    replays while the request decodes alone, and a step over its cache and those of the
    requests decoding with it replays while they stay together (`DecodeGraphs.together`).
    """

    def __init__(
        self,
        model: MemoryLLM,
        input_ids: torch.Tensor,
        params: SamplingParams,
        eos_token_ids: Sequence[int] = (),
        attention_mask: torch.Tensor | None = None,
        pool: MemoryPool | None = None,
        *,
        cuda_graph: bool = True,
        graphs: DecodeGraphs | None = None,
        eos_check_every: int | None = None,
        logit_bias: torch.Tensor | None = None,
        answer_spans: TokenFilter | None = None,
        recalled: Recalled | None = None,
    ):
        """`logit_bias` [B, V]: added to each row's logits before every token is chosen;
        `answer_spans`: which tokens each row may choose (`memagent.answer_spans.AnswerSpans`);
        `recalled`: the whole writes each row reads, chosen before (else its prompt chooses)."""
        self.model = model
        self.params = params
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        ids, mask = left_align(input_ids.to(model.device), attention_mask, self.pad_id)
        self.input_ids, self.attention_mask = ids, mask.to(model.device)
        self.pool = pool or model.pool
        self.generator = None
        if params.do_sample:
            self.generator = torch.Generator(device=model.device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        self.eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=model.device)
        self.check_every = eos_check_every or eos_check_interval(model.device)
        if graphs is None and cuda_graph and (model.device.type == "cuda" or model.compile_decode):
            graphs = DecodeGraphs.of(model)
        self.graphs = graphs if cuda_graph and params.max_new_tokens >= GRAPH_MIN_NEW_TOKENS else None
        self.finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=model.device)
        self.produced = 0
        self.done = False
        self.ready: deque[torch.Tensor] = deque()  # decoded tokens [B] the reader has not taken
        self.cache = None
        self.graph_step = None  # a static step of this request's shape, whose cache it decodes in
        self.logits: torch.Tensor | None = None  # [B, V]: the next token's, once prefilled
        self.logit_bias = None if logit_bias is None else logit_bias.to(model.device, torch.float32)
        self.answer_spans = None if answer_spans is None else answer_spans.to(model.device)
        self.recalled = recalled
        self.error: BaseException | None = None  # what failed a prefill shared with others
        self._held = contextlib.ExitStack()

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_tokens(self) -> int:
        return self.input_ids.shape[1] + self.params.max_new_tokens

    @property
    def shares_prefill(self) -> bool:
        """Whether the prompt may prefill in one pass with others' (`DecodeBatch.prefill`)."""
        return self.input_ids.numel() <= SHARED_PREFILL_QUERIES and self.model.shares_prefill(self.pool)

    def open_cache(self) -> None:
        """The request's cache (a borrowed static step's on CUDA); call under the model's lock:
        a capture must not interleave with other model calls."""
        if self.graphs is not None:
            memory = self.pool if self.pool.initialized else None
            self.graph_step = self._held.enter_context(self.graphs.borrow(memory, self.rows, self.max_tokens))
        if self.graph_step is not None:
            self.cache = self.graph_step.cache
        else:
            self.cache = self.model.new_cache(self.pool, self.rows, self.max_tokens)
        if self.cache.long_term is not None:
            self.cache.long_term.ahead = self.recalled

    def prefill(self, lock: contextlib.AbstractContextManager, contended: Callable[[], bool]) -> Iterator[None]:
        """Run the prompt through a new cache, one chunk per hold of `lock`; yields between chunks,
        which are small on the CPU while `contended()`: others wait for them."""
        with lock, torch.inference_mode():
            self.open_cache()
            self.logits = self.static_logits()
        if self.logits is not None:
            return
        hidden = None
        on_cpu = self.model.device.type == "cpu"

        def queries() -> int:
            return CPU_PREFILL_QUERIES if on_cpu and contended() else PREFILL_QUERY_ROWS

        chunks = self.model.prefill_chunks(self.input_ids, self.attention_mask, self.cache, queries)
        for chunk in _locked(chunks, lock):
            if hidden is not None:
                yield
            hidden = chunk
        with lock, torch.inference_mode():
            self.logits = self.model.lm_head(hidden[:, -1])

    def static_logits(self) -> torch.Tensor | None:
        """The next token's logits [B, V], prefilled through the borrowed step's static prefill
        (a captured graph on CUDA: see `StaticDecodeStep.prefill`); None if it does not take this
        prompt. Under the model's lock."""
        return None if self.graph_step is None else self.graph_step.prefill(self.input_ids, self.attention_mask)

    def sample(self) -> torch.Tensor:
        """The next token of every row [B], from the logits of the last step; ends the decoding
        after its last token."""
        logits = self.logits if self.logit_bias is None else self.logits + self.logit_bias
        if self.answer_spans is not None:
            logits = self.answer_spans.restrict(logits, self.produced, self.eos)
        token = next_token(logits, self.params, self.generator).masked_fill(self.finished, self.pad_id)
        if self.answer_spans is not None:
            self.answer_spans.advance(token, self.produced)
        self.finished |= torch.isin(token, self.eos)
        self.produced += 1
        self.ready.append(token)
        last = self.produced == self.params.max_new_tokens
        self.done = last or (self.produced % self.check_every == 0 and bool(self.finished.all()))
        return token

    def close(self) -> None:
        """Give back what the request holds (a borrowed static step)."""
        self.done = True
        self._held.close()


_END = object()


def _locked(items: Iterator, lock: contextlib.AbstractContextManager) -> Iterator:
    """Each item of `items` computed under `lock` (and inference mode), released in between."""
    while True:
        with lock, torch.inference_mode():
            item = next(items, _END)
        if item is _END:
            return
        yield item


class DecodeBatch:
    """The requests decoding on one model, stepped together: each step samples one token for
    every request (that is not MAX_AHEAD tokens ahead of its reader) and runs one forward pass
    over all of their rows. `lock` guards the model; readers on any thread call `next_token`,
    which steps the batch only when their own request has nothing decoded yet.
    """

    def __init__(self, model: MemoryLLM, lock: contextlib.AbstractContextManager):
        self.model = model
        self.lock = lock
        self.running: list[Decoding] = []
        # Short prompts waiting to prefill; any reader holding `lock` may take them all.
        self.waiting: list[Decoding] = []
        self._waiting_lock = threading.Lock()  # not `lock`: a request queues while others run
        self.prefills = 0  # forward passes that prefilled short prompts (tests read it)
        self._turns = threading.Condition()  # told when a reader's turn at the lock ends
        self._leading = False
        self.steps = 0  # forward passes run (benchmarks and tests read it)
        self.on_step: Callable[[int], None] | None = None  # told the rows of each forward pass (metrics)
        # Set by a server: requests may come at any moment, and the first to come would wait a
        # whole prefill chunk, chosen before it came. See `contended`.
        self.serving = False
        # Whether requests are about to start (a server's queue): one just prefilled then lets
        # them prefill and join before the batch steps, instead of stepping part-full.
        self.others_starting: Callable[[], bool] = lambda: False

    def contended(self) -> bool:
        """Whether another request may wait for the next prefill chunk: one decoding here, or
        any on a server."""
        return self.serving or bool(self.running)

    def prefill(self, decoding: Decoding) -> Iterator[None]:
        """Prefill `decoding` and let it join the batch; yields None while others may run.

        A long prompt prefills alone, chunk by chunk (`Decoding.prefill`). A short one waits in
        `waiting`, first for the requests about to start (`others_starting`), and is prefilled
        by whoever next holds the lock, in one forward pass with every short prompt waiting
        then that fits (`MemoryLLM.prefill_shared`): before that reader's own prefill, or
        before the batch's next step. Requests arriving together thus cost one pass, not one
        each, and step together from their first token.
        """
        if not decoding.shares_prefill:
            yield from decoding.prefill(self.lock, self.contended)
            self.join(decoding)
            if self.others_starting():
                yield None
            return
        with self._waiting_lock:
            self.waiting.append(decoding)
        try:
            if self.others_starting():
                yield None
            self._lead(lambda: decoding.logits is None and decoding.error is None, self._prefill_waiting)
        finally:
            with self._waiting_lock:
                if decoding in self.waiting:
                    self.waiting.remove(decoding)
        if decoding.error is not None:
            raise decoding.error

    def _prefill_waiting(self) -> None:
        """Prefill the first short prompt waiting and those after it that fit one pass with it:
        at most PREFILL_QUERY_ROWS queries, each cache with room for the longest prompt. They
        join the batch; a failure is each one's to raise. Under the lock."""
        with self._waiting_lock:
            if not self.waiting:
                return
            group, rows, longest = [], 0, 0
            for decoding in self.waiting:
                length = max(longest, decoding.input_ids.shape[1])
                fits = (rows + decoding.rows) * length <= PREFILL_QUERY_ROWS
                if group and (not fits or any(d.max_tokens < length for d in (*group, decoding))):
                    continue
                group.append(decoding)
                rows, longest = rows + decoding.rows, length
            for decoding in group:
                self.waiting.remove(decoding)
        try:
            for decoding in group:
                decoding.open_cache()
            logits = {d: d.static_logits() for d in group}
            shared = [d for d in group if logits[d] is None]
            if shared:
                hidden = self.model.prefill_shared([(d.input_ids, d.attention_mask, d.cache) for d in shared])
                logits.update(zip(shared, self.model.lm_head(hidden).split([d.rows for d in shared])))
        except BaseException as error:
            for decoding in group:
                decoding.error = error
            if not isinstance(error, Exception):
                raise
            return
        self.prefills += 1
        self.running += group  # before their logits: a reader seeing those finds its request running
        for decoding in group:
            decoding.logits = logits[decoding]

    def join(self, decoding: Decoding) -> None:
        with self.lock:
            self.running.append(decoding)

    def leave(self, decoding: Decoding) -> None:
        with self.lock:
            if decoding in self.running:
                self.running.remove(decoding)

    def next_token(self, decoding: Decoding) -> torch.Tensor | None:
        """`decoding`'s next tokens [B], or None once it has ended and everything was taken."""
        self._lead(lambda: not decoding.ready and not self._ended(decoding), self._step)
        return decoding.ready.popleft() if decoding.ready else None

    def _ended(self, decoding: Decoding) -> bool:
        return decoding.done or decoding not in self.running

    def _lead(self, needed: Callable[[], bool], work: Callable[[], None]) -> None:
        """Run `work` under the lock while `needed()`, one reader at a time.

        The others wait for the turn to end rather than for the lock: its work (a step, a
        shared prefill) is what they wait for, and what it brought (a token: a deque's ends are
        thread-safe) they take without the lock. Queued at the lock, readers would lose it to
        whoever steps (a lock is not fair), fall MAX_AHEAD behind and sit steps out, and the
        batch would run more, emptier steps.
        """
        while needed():
            with self._turns:
                if self._leading:
                    self._turns.wait()
                    continue
                self._leading = True
            try:
                with self.lock, torch.inference_mode():
                    if needed():
                        work()
            finally:
                with self._turns:
                    self._leading = False
                    self._turns.notify_all()

    def _step(self) -> None:
        self._prefill_waiting()  # short prompts waiting join this step, not a later one
        stepping = [d for d in self.running if len(d.ready) < MAX_AHEAD]
        tokens = [d.sample() for d in stepping]
        going = [(d, t) for d, t in zip(stepping, tokens) if not d.done]
        self.running = [d for d in self.running if not d.done]
        if not going:
            return
        self.steps += 1
        if self.on_step is not None:
            self.on_step(sum(d.rows for d, _ in going))
        step = None
        if self._in_static_steps([d for d, _ in going]):
            going.sort(key=lambda pair: pair[0].graph_step.number)  # one row order per set: one capture
            step = going[0][0].graphs.together([d.graph_step for d, _ in going])
        batch = torch.cat([t for _, t in going])[:, None] if len(going) > 1 else going[0][1][:, None]
        if step is not None:
            logits = step(batch)
        else:
            logits = self.model.decode_rows(batch, [d.cache for d, _ in going])
        for (decoding, _), part in zip(going, logits.split([d.rows for d, _ in going])):
            decoding.logits = part

    @staticmethod
    def _in_static_steps(going: list[Decoding]) -> bool:
        """Whether each request decodes in a static step of the same DecodeGraphs."""
        graphs = going[0].graphs
        return all(d.graph_step is not None and d.graphs is graphs for d in going)


def decode(
    model: MemoryLLM,
    input_ids: torch.Tensor,
    params: SamplingParams,
    eos_token_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    pool: MemoryPool | None = None,
    *,
    batch: DecodeBatch | None = None,
    lock: contextlib.AbstractContextManager = contextlib.nullcontext(),
    **options,
) -> Iterator[torch.Tensor | None]:
    """A request's life: None while others may run before it decodes (see `DecodeBatch.prefill`:
    between a long prompt's chunks; while other requests are about to start, so that they
    prefill and join its first step), then its next tokens [B] per step, decoded in `batch`
    (default: a batch of its own, under `lock`). Closing the iterator ends the request between
    steps. `options` go to `Decoding`.
    """
    batch = batch or DecodeBatch(model, lock)
    decoding = Decoding(model, input_ids, params, eos_token_ids, attention_mask, pool, **options)
    try:
        yield from batch.prefill(decoding)
        while (token := batch.next_token(decoding)) is not None:
            yield token
    finally:
        batch.leave(decoding)
        decoding.close()


