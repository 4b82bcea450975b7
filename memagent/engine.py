"""Text in, text out: a model with its tokenizer and any number of named memory pools.

The write path (text -> `WritePlan` -> `MemoryLLM.inject`) and the read path (prompt ->
`Generation`: streamed text through `memagent.model.generation`, then its `Usage`) start here;
`memagent.engines` builds engines. The store builds on these and never touches the model.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memagent.abstention import ABSTENTION, is_abstention, names_in
from memagent.answer_spans import AnswerSpans, SpanVocabulary, question_words
from memagent.model.cuda_graph import LANE_ROWS
from memagent.model.decoding import GRAPH_MIN_NEW_TOKENS, DecodeBatch, decode
from memagent.model.long_term_memory import mismatch
from memagent.model.memory_pool import MemoryPool
from memagent.model.memoryllm import MemoryLLM
from memagent.model.pool_file import PoolFileError, load_pool, save_pool
from memagent.model.recall_keys import LexicalKeys
from memagent.model.write_memory import Recalled, WriteMemory, holding
from memagent.model.write_ranker import WriteRanker
from memagent.sampling import SamplingParams, Usage
from memagent.text_stream import TextStream

# The released checkpoints' authors warn that writes under 16 tokens disturb the memory.
SHORT_WRITE_TOKENS = 16
# Distinct names of a question `Engine.abstains` looks up: a question rarely has more, and a
# crafted one with thousands would hold the engine while each is encoded and looked up.
CHECKED_NAMES = 16
# How far an answer leans toward the words of the write its read places nearest the question:
# logits added to the tokens spelled as them, and to those of "I don't know." (less: enough
# that abstaining keeps most of its odds; less again where only writes about the question's
# subject may answer). Measured in docs/default_model.md, "Answers lean on the best match"
# and "Answers come from writes about the subject".
COPY_BIAS = 3.0
ABSTENTION_COPY_BIAS = 2.5
SUBJECT_ABSTENTION_COPY_BIAS = 0.75
# Tokens of a write's text an answer may be copied from, at most: the longest chunk a write
# takes, so that a crafted import cannot make reads slow (`memagent.answer_spans`).
SPAN_TEXT_TOKENS = 512
# Write states the ranker keeps for later asks: 4,096 of the default's (576 numbers each) take 9 MiB.
KEPT_WRITE_STATES = 4096
# Stands for the question in a question prompt, to find what frames a prompt's question.
_QUESTION = "\x00"
_LETTER = r"[^\W\d_]"


def _as_word(name: str) -> re.Pattern:
    """`name` (a word of `names_in`), in any case, where it stands as a word of its own: "Lars"
    not in "Larsen", "774" not in "77411", but "KL" and "1021" in "KL1021" (codes are written
    with and without a space between letters and digits)."""

    def bound(char: str) -> str:
        return _LETTER if char.isalpha() else r"\d" if char.isdigit() else "_"

    return re.compile(rf"(?<!{bound(name[0])}){re.escape(name)}(?!{bound(name[-1])})", re.IGNORECASE)


@dataclass(frozen=True)
class WriteReceipt:
    tokens: int  # tokens of the text as given
    chunks: int  # writes (forward passes) it took
    step: int  # the pool's write count after this write
    ms: float


@dataclass(frozen=True)
class WritePlan:
    """A text checked, encoded and cut into the token chunks that are written, one step each."""

    tokens: int  # tokens of the text as given
    chunks: list[list[int]]


@dataclass(frozen=True)
class Chunking:
    """How text becomes writes.

    Text longer than `max_chunk_tokens` is split into chunks of that many tokens, one write
    each (the paper writes chunks of at most 512 tokens). A write shorter than
    `min_write_tokens` is repeated until it reaches that length when `repeat_short` is set:
    models trained only on long writes (the released checkpoints) then see a context of the
    length they know, made of nothing but the text itself. Models trained on short writes
    (the embedded default) take them as they are.
    """

    max_chunk_tokens: int = 512
    min_write_tokens: int = SHORT_WRITE_TOKENS
    repeat_short: bool = True

    def chunks(self, ids: list[int]) -> list[list[int]]:
        chunks = [ids[i : i + self.max_chunk_tokens] for i in range(0, len(ids), self.max_chunk_tokens)]
        if self.repeat_short:
            chunks = [self._lengthen(c) for c in chunks]
        return chunks

    def _lengthen(self, chunk: list[int]) -> list[int]:
        if len(chunk) >= self.min_write_tokens:
            return chunk
        copies = -(-self.min_write_tokens // len(chunk))
        return chunk * copies


# Share of the device memory free after loading that decode caches may take by default; the
# residency tiers keep pools in half of it (memagent.store.residency).
CACHE_SHARE = 0.4


class CacheBudgetExceeded(RuntimeError):
    """Starting a generation would take the decode caches past the engine's budget."""


class CacheBudget:
    """Bytes of decode caches that running generations may hold at once (None: no limit).

    A generation reserves its cache's size before the cache exists and returns it when it
    ends, so a burst of long requests is refused with a clear error instead of running the
    device out of memory halfway through a decode.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.live = 0
        self._lock = threading.Lock()

    @classmethod
    def for_device(cls, device: torch.device) -> CacheBudget:
        if device.type != "cuda":
            return cls(None)  # host memory: the operating system's limits apply
        return cls(int(torch.cuda.mem_get_info(device)[0] * CACHE_SHARE))

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        with self._lock:
            if self.limit is not None and self.live + nbytes > self.limit:
                raise CacheBudgetExceeded(
                    f"a decode cache of {nbytes / 2**20:.1f} MiB does not fit: running generations hold "
                    f"{self.live / 2**20:.1f} of {self.limit / 2**20:.1f} MiB; retry later or ask for fewer tokens"
                )
            self.live += nbytes
        try:
            yield
        finally:
            with self._lock:
                self.live -= nbytes


class Engine:
    """Owns the model; pools are named memories. Model calls from many threads are serialized
    one step at a time, so a long generation does not hold off writes to other pools."""

    def __init__(
        self,
        model: MemoryLLM,
        tokenizer,
        *,
        name: str = "memoryllm",
        chunking: Chunking | None = None,
        cache_budget: CacheBudget | None = None,
        max_long_term_tokens: int | None = None,
        ranker: WriteRanker | None = None,
    ):
        """`max_long_term_tokens`: with M+, the tokens each pool's long-term memory keeps per
        layer (None: unbounded, as M+); applied to every pool this engine makes, loads or writes.
        `ranker`: orders an ask's recalled writes about its subject (`answer_reading`)."""
        slots = model.config.long_term_slots
        if slots and max_long_term_tokens is not None and max_long_term_tokens < slots:
            raise ValueError(
                f"max_long_term_tokens ({max_long_term_tokens}) must be at least the {slots} "
                "long-term tokens a read places per layer"
            )
        if ranker is not None and ranker.depth > model.config.num_hidden_layers:
            raise ValueError(f"the ranker reads layer {ranker.depth}; the model has {model.config.num_hidden_layers}")
        self.max_long_term_tokens = max_long_term_tokens
        self.ranker = ranker
        # The ranker's states of writes it scored, by (store uid, write number): a write never
        # changes, so only a new one or the question costs a pass. Least recently used out first.
        self._write_states: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.model = model
        self.tokenizer = tokenizer
        before, _, after = self.question_prompt(_QUESTION).partition(_QUESTION)
        model.recall_keys = LexicalKeys(tokenizer, frame=(before, after))
        self.name = name
        self.chunking = chunking or Chunking()
        self.cache_budget = cache_budget or CacheBudget.for_device(model.device)
        self.pools: dict[str, NamedPool] = {}
        self.lock = threading.RLock()
        # Every generation on this engine, whatever memory it reads, decodes in this one batch.
        self.batch = DecodeBatch(model, self.lock)
        self.eos_token_ids = sorted(set(model.config.eos_token_ids()) | self._tokenizer_eos())

    def prepare_decode(self) -> None:
        """If the model compiles its decode steps (`MemoryLLM.compile_decode`), compile them now,
        a row's and a lane's, by a lane's worth of one-row answers decoded together on a scratch
        memory: no request then waits for a compile (a minute or so each)."""
        if not self.model.compile_decode:
            return
        pool = self.new_pool()
        text = "The decode steps are compiled before the first request."
        self.write(pool, text, progress=False)
        ids = torch.tensor([self.encode(text)], device=self.device)
        params = SamplingParams(max_new_tokens=GRAPH_MIN_NEW_TOKENS)
        with contextlib.ExitStack() as answers:  # no end-of-sequence: each decodes every step
            answer = functools.partial(decode, self.model, ids, params, (), None, pool, batch=self.batch)
            rows = [answers.enter_context(contextlib.closing(answer())) for _ in range(LANE_ROWS)]
            for _ in zip(*rows):  # in turns, as readers would: their rows step together
                pass

    def _tokenizer_eos(self) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return {eos} if isinstance(eos, int) else set()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def fingerprint(self) -> str:
        return self.model.fingerprint()

    # -- pools -----------------------------------------------------------------------------

    def pool(self, name: str) -> "NamedPool":
        """The pool called `name`, created empty on first use."""
        with self.lock:
            if name not in self.pools:
                self.pools[name] = NamedPool(self, name, self.new_pool())
            return self.pools[name]

    def drop(self, name: str) -> None:
        with self.lock:
            self.pools.pop(name, None)

    def new_pool(self, seed: int = 0) -> MemoryPool:
        """An empty pool for this model; `seed` fixes its initial contents."""
        return self._bounded(self.model.new_pool(seed=seed))

    def _bounded(self, pool: MemoryPool) -> MemoryPool:
        if pool.long_term is not None:
            pool.long_term.limit(self.max_long_term_tokens)
        return pool

    @property
    def pool_nbytes(self) -> int:
        """Bytes of one pool's memory on the device."""
        return self.model.pool.memory.nbytes

    def load_pool(self, path: str | Path) -> MemoryPool:
        """A pool file saved by this model, on its device and in its dtype (PoolFileError if it is
        unreadable, another model's, or its long-term memory does not fit this model's)."""
        pool = load_pool(path, self.fingerprint(), device=self.device, dtype=self.dtype)
        problem = mismatch(pool.long_term, self.model.config.long_term, self.model.config.num_tokens)
        if problem:
            raise PoolFileError(f"{path}: {problem}")
        return self.adopt(pool)

    def adopt(self, pool: MemoryPool) -> MemoryPool:
        """A pool read from disk, made this engine's: under its long-term bound, and its whole
        writes keyed as this engine keys them (a file saved under an older way of keying holds
        old keys; each write's kept token ids give the new ones)."""
        if isinstance(pool.long_term, WriteMemory):
            pool.long_term.rekey(self.model.recall_keys)
        return self._bounded(pool)

    # -- writing ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def plan_write(self, text: str) -> WritePlan:
        """What writing `text` takes; raises ValueError for text with nothing to write."""
        if not text or not text.strip():
            raise ValueError("cannot write empty text into memory")
        ids = self.encode(text)
        return WritePlan(len(ids), self.chunking.chunks(ids))

    def apply(self, pool: MemoryPool, chunks: Sequence[Sequence[int]], *, progress: bool = False) -> None:
        """Write planned (or logged) chunks into `pool`, one step each, under this engine's
        long-term bound (a pool loaded from elsewhere may have been written under another)."""
        self._bounded(pool)
        bar = tqdm(chunks, desc="writing", unit="chunk", disable=not progress or len(chunks) < 4)
        for chunk in bar:
            tensor = torch.tensor([list(chunk)], dtype=torch.long, device=self.device)
            with self.lock, torch.inference_mode():
                self.model.inject(tensor, pool=pool)

    def write(self, pool: MemoryPool, text: str, *, progress: bool = True) -> WriteReceipt:
        start = time.perf_counter()
        plan = self.plan_write(text)
        self.apply(pool, plan.chunks, progress=progress)
        self.refresh_reads(pool)
        return WriteReceipt(plan.tokens, len(plan.chunks), pool.step, (time.perf_counter() - start) * 1000)

    def refresh_reads(self, pool: MemoryPool) -> None:
        """After a write, bring the keys/values that reads of `pool` attend up to date, so the
        next read's first token does not wait for them: the pool's prefix, incrementally (a
        write changed K of N tokens; skipped for a pool never read, which has none to update),
        or the newest whole write's, which the next read most likely recalls. Out of device
        memory, it leaves them to the next read: the write itself is done."""
        with self.lock, torch.inference_mode(), contextlib.suppress(torch.OutOfMemoryError):
            if pool.prefix_kv is not None:
                self.model.memory_prefix(pool)
            self.model.keep_last_write(pool)

    # -- reading ---------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nAssistant:"
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def question_prompt(self, question: str) -> str:
        """How `ask` puts a question to the model (training uses the same form)."""
        return self.chat_prompt([{"role": "user", "content": question}])

    def answer(
        self, pool: MemoryPool, question: str, params: SamplingParams | None = None, *, grounded: bool = False, **options
    ) -> TextPieces:
        """`ask`'s answer to `question` from `pool` as text pieces (a `Generation`, or an
        `Abstained` when `abstains` says so without reading); `options` as for `generate`.
        `grounded`: an answer no write supports (`grounding`) is "I don't know." as well."""
        prompt = self.question_prompt(question)
        if self.abstains(pool, question):
            return Abstained(len(self.encode(prompt)), pool.step)
        supported = self.grounding(pool, question) if grounded else None
        generation = self.generate(pool, prompt, SamplingParams.for_ask(params, **options), answers=True)
        return generation if supported is None else Grounded(generation, supported)

    def answer_reading(
        self, pool: MemoryPool, prompts: Sequence[str], prompt_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, AnswerSpans, Recalled] | None:
        """How answers to the question prompts `prompts` (as `prompt_ids`, left-padded, `mask`)
        lean on the writes their reads recall: a logit bias [B, V] added at every token, the
        spans of those writes' texts they may take (`memagent.answer_spans`) and the writes
        themselves, in the order the reads place them. None for a memory without whole writes.

        Reading a value it never saw in training, the model rebuilds it from memory tokens and
        often misspells it ("rammen" for "ramen") or answers with the question's subject. The
        key of the write its read trusts most, the best match, keeps the value's spelling: the
        tokens spelled as that write's words that neither the question nor its chat frame uses
        ("a", "named", "user": no value; leaning on them moved answers off the value) get
        COPY_BIAS, and those of "I don't know." ABSTENTION_COPY_BIAS. The texts of the recalled
        writes about the question's subject (`_answering`) bound what it may answer; where those
        are fewer than all, the look-alikes' values are no answer, and "I don't know." leans
        less (SUBJECT_ABSTENTION_COPY_BIAS). With a `ranker`, the writes about the subject go
        last, the one it ranks best nearest the question (`_ranked`)."""
        store = pool.long_term
        if not isinstance(store, WriteMemory) or not store.num_writes:
            return None
        keys = self.model.recall_keys
        asked = [keys(ids[real.bool()]) for ids, real in zip(prompt_ids, mask)]
        chosen = store.choose(asked)
        questions = [keys.question_of(prompt) for prompt in prompts]
        answering = [self._answering(store, question, row) for question, row in zip(questions, chosen.tolist())]
        if self.ranker is not None:
            chosen = torch.tensor(self._ranked(store, questions, chosen.tolist(), answering))
        vocab = self.model.config.vocab_size
        bias = torch.zeros(len(asked), vocab)
        for row, (key, best, (_, about_subject)) in enumerate(zip(asked, chosen[:, -1].tolist(), answering)):
            words = store.key(best)
            copied = COPY_BIAS * keys.tokens_spelled(words[~torch.isin(words, torch.cat([key, keys.frame_words]))])
            abstaining = SUBJECT_ABSTENTION_COPY_BIAS if about_subject else ABSTENTION_COPY_BIAS
            leaning = torch.maximum(copied, abstaining * self._abstention_tokens)[:vocab]
            bias[row, : len(leaning)] = leaning
        texts = [self._texts(store, writes) for writes, _ in answering]
        spans = AnswerSpans.of(self._span_vocabulary, texts, [question_words(q) for q in questions])
        return bias, spans, store.recalled(chosen)

    def _ranked(
        self,
        store: WriteMemory,
        questions: list[str],
        recalled: list[list[int]],
        answering: list[tuple[list[int], bool]],
    ) -> list[list[int]]:
        """Each row of `recalled` reordered for its question: its writes about the question's
        subject (`answering`), if several, after the others and in the ranker's order, the best
        last. The keys rank them by shared words, and often only the subject's name is shared
        ("Gemma" in "What is Gemma's profession?" and in two writes about two Gemmas). The
        questions that need it pass through the model together."""
        texts = [[store.text(write) for write in writes] for writes, _ in answering]
        ranking = [
            row
            for row, ((writes, about), written) in enumerate(zip(answering, texts))
            if about and len(writes) >= 2 and all(len(text) for text in written)
        ]
        if not ranking:
            return recalled
        asked_ids = [torch.tensor(self.encode(questions[row])[:SPAN_TEXT_TOKENS]) for row in ranking]
        reordered = list(recalled)
        with self.lock, torch.inference_mode():
            asked = self.ranker.states(self.model, asked_ids)
            for row, question in zip(ranking, asked):
                writes = answering[row][0]
                scores = self.ranker(question, self._states_of(store, writes, texts[row]))
                ranked = [writes[i] for i in scores.argsort(stable=True).tolist()]
                reordered[row] = [write for write in recalled[row] if write not in writes] + ranked
        return reordered

    def _states_of(self, store: WriteMemory, writes: list[int], texts: list[torch.Tensor]) -> torch.Tensor:
        """The ranker's states [n, d] of `writes` (token ids `texts`), kept for later asks."""
        keys = [(store.uid, store.first + write) for write in writes]
        new = [i for i, key in enumerate(keys) if key not in self._write_states]
        if new:
            states = self.ranker.states(self.model, [texts[i][:SPAN_TEXT_TOKENS] for i in new])
            self._write_states.update((keys[i], state) for i, state in zip(new, states))
        for key in keys:
            self._write_states.move_to_end(key)
        while len(self._write_states) > KEPT_WRITE_STATES:
            self._write_states.popitem(last=False)
        return torch.stack([self._write_states[key] for key in keys])

    def _answering(self, store: WriteMemory, question: str, recalled: list[int]) -> tuple[list[int], bool]:
        """The writes of `recalled` an answer to `question` may come from, and whether they are
        those about its subject: the ones that name every name it uses (`_naming`), if the
        question names any and one does; else all. Reading a question about one subject, the
        model often answers from a look-alike write about another ("Liam Lund" for "What did
        Amara name the hamster?" where Liam's hamster was written)."""
        names = self._names(question)
        if not names:
            return recalled, False
        named = self._naming(store, names, recalled).all(0)  # only these: a read recalls a few of many
        about = [write for write, held in zip(recalled, named.tolist()) if held]
        return (about, True) if about else (recalled, False)

    @functools.cached_property
    def _span_vocabulary(self) -> SpanVocabulary:
        return SpanVocabulary(self.tokenizer)

    def _texts(self, store: WriteMemory, writes: list[int]) -> list[str] | None:
        """The texts of `writes`; None if one was written before writes kept their texts."""
        ids = [store.text(write)[:SPAN_TEXT_TOKENS] for write in writes]
        if not all(len(written) for written in ids):
            return None
        return self._decode(ids)

    def _decode(self, texts: list[torch.Tensor]) -> list[str]:
        """Written texts as strings, from the token ids the tokenizer spells."""
        return self.tokenizer.batch_decode([written[written < len(self.tokenizer)].tolist() for written in texts])

    @functools.cached_property
    def _abstention_tokens(self) -> torch.Tensor:
        keys = self.model.recall_keys
        return keys.tokens_spelled(keys.spellings(ABSTENTION))

    def _key(self, text: str) -> torch.Tensor:
        return self.model.recall_keys(torch.tensor(self.encode(text), dtype=torch.long))

    @staticmethod
    def _names(question: str) -> list[str]:
        """The first CHECKED_NAMES distinct names `question` uses (`memagent.abstention.names_in`)."""
        return list(dict.fromkeys(names_in(question)))[:CHECKED_NAMES]

    def _naming(self, store: WriteMemory, names: list[str], writes: list[int] | None = None) -> torch.Tensor:
        """[len(names), n] bool: which of `writes` (all that `store` holds if None) name each of
        `names` as a word of its own (`_as_word`). Their keys tell which may: a key holds a
        name's tokens wherever they stand, and "Bruno Larsen" those of "Lars". Their texts, where
        kept, tell which do; each is decoded once, however many names it may hold."""
        if writes is None:
            writes, key_ids, key_ends = list(range(store.num_writes)), store.key_ids, store.key_ends
        else:
            keys = [store.key(write) for write in writes]
            key_ids, key_ends = torch.cat(keys), torch.tensor([len(key) for key in keys]).cumsum(0)
        named = torch.zeros(len(names), len(writes), dtype=torch.bool)
        for row, name in zip(named, names):
            row[:] = holding(key_ids, key_ends, self._key(name))
        kept = {i: store.text(writes[i]) for i in named.any(0).nonzero().flatten().tolist()}
        kept = {i: written for i, written in kept.items() if len(written)}
        words = [_as_word(name) for name in names]
        for i, text in zip(kept, self._decode(list(kept.values()))):
            named[:, i] &= torch.tensor([bool(word.search(text)) for word in words])
        return named

    def abstains(self, pool: MemoryPool, question: str) -> bool:
        """Whether the answer is "I don't know." without reading: `pool` keeps whole writes and
        holds none, or none that names a name the question uses (`memagent.abstention.names_in`;
        as `_naming` finds them). Other memories always read."""
        store = pool.long_term
        if not isinstance(store, WriteMemory):
            return False
        if not store.num_writes:
            return True
        return not bool(self._naming(store, self._names(question)).any(1).all())

    def grounding(self, pool: MemoryPool, question: str) -> Callable[[str], bool]:
        """Whether an answer to `question` is grounded in `pool` as it is now: one write names
        every name the question uses (`_naming`) and holds the answer's words that the question
        does not use. Asked about what no write tells, the model copies a name or value of a
        look-alike write, which names another subject; an answer made only of the question's
        words passes, and so does "I don't know.". Needs a memory of whole writes, which keeps
        their words."""
        store = pool.long_term
        if not isinstance(store, WriteMemory):
            raise ValueError("grounded answers need a memory that keeps whole writes, as the embedded default does")
        key_ids, key_ends = store.key_ids, store.key_ends  # as the read finds them: later writes ground nothing
        named = self._naming(store, self._names(question)).all(0)
        asked = self._key(question)

        def supported(answer: str) -> bool:
            if is_abstention(answer):
                return True
            for spelling in (answer, " " + answer):  # as a word of its own or after a space
                rest = self._key(spelling)
                rest = rest[~torch.isin(rest, asked)]
                if not len(rest) or bool((holding(key_ids, key_ends, rest) & named).any()):
                    return True
            return False

        return supported

    def stream(
        self,
        pool: MemoryPool,
        prompts: Sequence[str],
        params: SamplingParams | None = None,
        *,
        answers: bool = False,
        **options,
    ) -> BatchGeneration:
        """The prompts' continuations, decoded together; `options` are SamplingParams fields.
        `answers`: the prompts are `question_prompt`s, answered as `ask` does (`answer_reading`)."""
        return BatchGeneration(self, pool, prompts, SamplingParams.of(params, **options), answers)

    def generate(self, pool: MemoryPool, prompt: str, params: SamplingParams | None = None, **options) -> Generation:
        """The continuation of one prompt, as text pieces; its `usage` once it ended."""
        return Generation(self.stream(pool, [prompt], params, **options))

    def complete(
        self,
        pool: MemoryPool,
        prompts: Sequence[str],
        params: SamplingParams | None = None,
        *,
        answers: bool = False,
        **options,
    ) -> list[str]:
        texts = ["" for _ in prompts]
        for pieces in self.stream(pool, prompts, params, answers=answers, **options):
            texts = [t + p for t, p in zip(texts, pieces)]
        return texts


class BatchGeneration:
    """Per decode step, the new text piece of every prompt (empty once that prompt ended).

    The last step's pieces end every prompt. `usages` (one `Usage` per prompt) is None until
    they were handed out or the iteration was closed; prompts still running when it was closed
    end "cancelled". Each prompt is tokenized once, here.
    """

    def __init__(
        self, engine: Engine, pool: MemoryPool, prompts: Sequence[str], params: SamplingParams, answers: bool = False
    ):
        encoded = engine.tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")
        self.usages: list[Usage] | None = None
        self._steps = self._run(engine, pool, list(prompts), encoded, params, answers)

    def __iter__(self) -> Iterator[list[str]]:
        return self

    def __next__(self) -> list[str]:
        return next(self._steps)

    def close(self) -> None:
        self._steps.close()

    def _run(
        self, engine: Engine, pool: MemoryPool, prompts: list[str], encoded, params: SamplingParams, answers: bool
    ) -> Iterator[list[str]]:
        prompt_tokens = encoded["attention_mask"].sum(1).tolist()
        self._texts = [TextStream(engine.tokenizer, params.stop) for _ in prompt_tokens]
        self._completion = [0 for _ in prompt_tokens]
        self._ended: list[str | None] = [None for _ in prompt_tokens]  # a finish reason once a prompt ended
        self._eos = set(engine.eos_token_ids)
        step = pool.step
        try:
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
            reading = engine.answer_reading(pool, prompts, ids, mask) if answers else None
            bias, spans, recalled = reading or (None, None, None)
            cache_bytes = engine.model.cache_nbytes(pool, ids.shape[0], ids.shape[1] + params.max_new_tokens)
            pieces, decoded = ["" for _ in self._texts], 0
            with engine.cache_budget.reserve(cache_bytes):
                steps = decode(
                    engine.model,
                    ids,
                    params,
                    engine.eos_token_ids,
                    mask,
                    pool,
                    batch=engine.batch,
                    logit_bias=bias,
                    answer_spans=spans,
                    recalled=recalled,
                )
                with contextlib.closing(steps):
                    for row_tokens in steps:
                        if row_tokens is None:  # a prompt chunk went through, or others start: let them run
                            yield ["" for _ in self._texts]
                            continue
                        pieces = self._pieces(row_tokens.tolist())
                        decoded += 1
                        if all(self._ended) or decoded == params.max_new_tokens:
                            break
                        yield pieces
            self._ended = [reason or "length" for reason in self._ended]
            self.usages = self._usages(prompt_tokens, step)  # before the last pieces: a reader knows they are
            # The last token's pieces, with the text held back for a stop string that never came.
            yield [piece + text.finish() for piece, text in zip(pieces, self._texts)]
        finally:
            if self.usages is None:
                self.usages = self._usages(prompt_tokens, step)

    def _usages(self, prompt_tokens: list[int], step: int) -> list[Usage]:
        reasons = [reason or "cancelled" for reason in self._ended]
        return [Usage(p, c, reason, step) for p, c, reason in zip(prompt_tokens, self._completion, reasons)]

    def _pieces(self, row_tokens: list[int]) -> list[str]:
        """Each prompt's text for its next token; finished rows get padding, which shows as
        nothing, and a stop string ends a row before its EOS."""
        pieces = []
        for i, (token, text) in enumerate(zip(row_tokens, self._texts)):
            if self._ended[i]:
                pieces.append("")
                continue
            self._completion[i] += 1
            pieces.append(text.finish() if token in self._eos else text.push(token))
            if text.stopped:
                self._ended[i] = "stop"
        return pieces


class Generation:
    """One prompt's text pieces as they are decoded (maybe empty); closing it stops decoding.

    `usage` is None until the last piece was handed out or it was closed, then a
    `memagent.sampling.Usage`.
    """

    def __init__(self, batch: BatchGeneration):
        self._batch = batch

    @property
    def usage(self) -> Usage | None:
        return self._batch.usages[0] if self._batch.usages else None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._batch)[0]

    def close(self) -> None:
        self._batch.close()


class Abstained:
    """`ask`'s answer when the memory cannot hold one (`Engine.abstains`): "I don't know." as
    one piece, nothing read or generated; `usage` is set once it was handed out."""

    def __init__(self, prompt_tokens: int, step: int):
        self.usage: Usage | None = None
        self._usage = Usage(prompt_tokens, 0, "stop", step)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.usage is not None:
            raise StopIteration
        self.usage = self._usage
        return ABSTENTION

    def close(self) -> None:
        if self.usage is None:
            self.usage = Usage(self._usage.prompt_tokens, 0, "cancelled", self._usage.step)


class Grounded:
    """A grounded `ask`'s answer (`Engine.grounding`): the generation's pieces held back, an
    empty piece for each so that a reader's steps go on, then the whole answer if `supported`
    says so, else "I don't know."; `usage` is set with that last piece."""

    def __init__(self, generation: Generation, supported: Callable[[str], bool]):
        self._generation = generation
        self._supported = supported
        self._pieces: list[str] = []
        self._answered = False

    @property
    def usage(self) -> Usage | None:
        return self._generation.usage if self._answered else None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._answered:
            raise StopIteration
        self._pieces.append(next(self._generation))
        if self._generation.usage is None:  # its last piece comes with its usage
            return ""
        self._answered = True
        answer = "".join(self._pieces)
        return answer if self._supported(answer.strip()) else ABSTENTION

    def close(self) -> None:
        self._generation.close()


# What a read hands out: text pieces, then its `usage`.
TextPieces = Generation | Abstained | Grounded


class NamedPool:
    """A memory pool with a name, on an engine: write text into it, read from it.

    Reads take a `SamplingParams` and/or its fields as keywords (applied over it).
    """

    def __init__(self, engine: Engine, name: str, pool: MemoryPool):
        self.engine = engine
        self.name = name
        self.pool = pool

    def inject(self, text: str, *, progress: bool = True) -> WriteReceipt:
        return self.engine.write(self.pool, text, progress=progress)

    def generate(self, prompt: str, params: SamplingParams | None = None, *, stream: bool = False, **options):
        """The continuation of `prompt` (a str), or with stream=True a `Generation`: its text
        pieces, then its `usage`."""
        generation = self.engine.generate(self.pool, prompt, params, **options)
        return generation if stream else "".join(generation)

    def generate_batch(
        self, prompts: Sequence[str], params: SamplingParams | None = None, *, answers: bool = False, **options
    ) -> list[str]:
        """The prompts' continuations, decoded together; `answers`: as `Engine.stream`."""
        return self.engine.complete(self.pool, prompts, params, answers=answers, **options)

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None, *, stream: bool = False, **options):
        return self.generate(self.engine.chat_prompt(messages), params, stream=stream, **options)

    def ask(self, question: str, params: SamplingParams | None = None, *, grounded: bool = False, **options) -> str:
        """A short answer to `question`, from what this memory holds (`SamplingParams.for_ask`);
        exactly "I don't know." (`memagent.abstention.ABSTENTION`) when it does not hold one.
        In a memory of whole writes, words copied from a write its read recalls
        (`memagent.answer_spans`). `grounded`: "I don't know." also when no write supports the
        answer (`Engine.grounding`)."""
        return "".join(self.engine.answer(self.pool, question, params, grounded=grounded, **options)).strip()

    def reset(self) -> None:
        with self.engine.lock:
            self.pool.reset()

    @property
    def step(self) -> int:
        return self.pool.step

    def save(self, path: str | Path) -> None:
        with self.engine.lock:
            save_pool(self.pool, path, self.engine.fingerprint())

    def load(self, path: str | Path) -> None:
        pool = self.engine.load_pool(path)
        with self.engine.lock:
            self.pool = pool
