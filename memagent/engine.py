"""Text in, text out: a model with its tokenizer and any number of named memory pools.

The write path (text -> chunks -> `MemoryLLM.inject`) and the read path (prompt -> streamed
text through `memagent.model.generation`) start here; `memagent.engines` builds engines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from memagent.model import generation
from memagent.model.memory_pool import MemoryPool
from memagent.model.memoryllm import MemoryLLM
from memagent.model.pool_file import load_pool, save_pool
from memagent.sampling import SamplingParams
from memagent.text_stream import TextStream

# The released checkpoints' authors warn that writes under 16 tokens disturb the memory.
SHORT_WRITE_TOKENS = 16


@dataclass(frozen=True)
class WriteReceipt:
    tokens: int  # tokens of the text as given
    chunks: int  # writes (forward passes) it took
    step: int  # the pool's write count after this write
    ms: float


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


class Engine:
    """Owns the model; pools are named memories. Model calls from many threads are serialized
    one step at a time, so a long generation does not hold off writes to other pools."""

    def __init__(self, model: MemoryLLM, tokenizer, *, name: str = "memoryllm", chunking: Chunking | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.chunking = chunking or Chunking()
        self.pools: dict[str, NamedPool] = {}
        self.lock = threading.RLock()
        self.eos_token_ids = sorted(set(model.config.eos_token_ids()) | self._tokenizer_eos())

    def _tokenizer_eos(self) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return {eos} if isinstance(eos, int) else set()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def fingerprint(self) -> str:
        return self.model.fingerprint()

    # -- pools -----------------------------------------------------------------------------

    def pool(self, name: str) -> "NamedPool":
        """The pool called `name`, created empty on first use."""
        with self.lock:
            if name not in self.pools:
                self.pools[name] = NamedPool(self, name, self.model.new_pool())
            return self.pools[name]

    def drop(self, name: str) -> None:
        with self.lock:
            self.pools.pop(name, None)

    # -- writing ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def write(self, pool: MemoryPool, text: str, *, progress: bool = True) -> WriteReceipt:
        if not text or not text.strip():
            raise ValueError("cannot write empty text into memory")
        start = time.perf_counter()
        ids = self.encode(text)
        chunks = self.chunking.chunks(ids)
        bar = tqdm(chunks, desc="writing", unit="chunk", disable=not progress or len(chunks) < 4)
        for chunk in bar:
            self.write_ids(pool, chunk)
        return WriteReceipt(len(ids), len(chunks), pool.step, (time.perf_counter() - start) * 1000)

    def write_ids(self, pool: MemoryPool, ids: Sequence[int]) -> None:
        tensor = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        with self.lock, torch.inference_mode():
            self.model.inject(tensor, pool=pool)

    # -- reading ---------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
            return "\n".join(lines) + "\nAssistant:"
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def question_prompt(self, question: str) -> str:
        """How `ask` puts a question to the model (training uses the same form)."""
        return self.chat_prompt([{"role": "user", "content": question}])

    def stream(
        self,
        pool: MemoryPool,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 64,
        stop: Sequence[str] = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[list[str]]:
        """Yield, per decode step, the new text piece of every prompt (empty once it ended)."""
        params = SamplingParams(max_new_tokens, do_sample, temperature, top_k, top_p, seed, tuple(stop))
        streams = [TextStream(self.tokenizer, params.stop) for _ in prompts]
        for tokens in self._tokens(pool, prompts, params):
            yield [text.finish() if token in self.eos_token_ids else text.push(token) for text, token in zip(streams, tokens)]
            if all(s.stopped for s in streams):
                return
        yield [s.finish() for s in streams]

    def _tokens(self, pool: MemoryPool, prompts: Sequence[str], params: SamplingParams) -> Iterator[list[int]]:
        encoded = self.tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")
        tokens = generation.stream(
            self.model, encoded["input_ids"], params, self.eos_token_ids, encoded["attention_mask"], pool, lock=self.lock
        )
        return (t.tolist() for t in tokens)

    def complete(self, pool: MemoryPool, prompts: Sequence[str], **options) -> list[str]:
        texts = ["" for _ in prompts]
        for pieces in self.stream(pool, prompts, **options):
            texts = [t + p for t, p in zip(texts, pieces)]
        return texts


class NamedPool:
    """A memory pool with a name, on an engine: write text into it, read from it."""

    def __init__(self, engine: Engine, name: str, pool: MemoryPool):
        self.engine = engine
        self.name = name
        self.pool = pool

    def inject(self, text: str, *, progress: bool = True) -> WriteReceipt:
        return self.engine.write(self.pool, text, progress=progress)

    def generate(self, prompt: str, *, stream: bool = False, **options):
        """The continuation of `prompt` (a str), or an iterator of text pieces with stream=True."""
        pieces = (p[0] for p in self.engine.stream(self.pool, [prompt], **options))
        return pieces if stream else "".join(pieces)

    def generate_batch(self, prompts: Sequence[str], **options) -> list[str]:
        return self.engine.complete(self.pool, prompts, **options)

    def chat(self, messages: Sequence[dict], *, stream: bool = False, **options):
        return self.generate(self.engine.chat_prompt(messages), stream=stream, **options)

    def ask(self, question: str, *, max_new_tokens: int = 32, **options) -> str:
        """A short answer to `question`, from what this memory holds."""
        options.setdefault("stop", ["\n"])
        prompt = self.engine.question_prompt(question)
        return self.generate(prompt, max_new_tokens=max_new_tokens, **options).strip()

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
        pool = load_pool(path, self.engine.fingerprint(), device=self.engine.device, dtype=self.engine.model.dtype)
        with self.engine.lock:
            self.pool = pool
