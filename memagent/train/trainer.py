"""Training the memory mechanism: episodes in, one optimizer step each.

Writes run through `MemoryLLM.new_memory` and land in a real `MemoryPool`, so the memory
changes only by writes; the loss of a later read flows back through the kept memory tokens
into the write passes marked for gradient. Unrelated writes run without gradient (cheap),
but the fact tokens they leave in the pool still carry it.

Most episodes start from the pool the previous episode left (detached), not an empty one: a
memory in use is full of earlier writes, and a fact then holds only its own K tokens, where
a first write into an empty pool fills all N of them.

A share of reads (`read_share`) sees, instead of the pool, a few whole writes, as a long-term
memory of whole writes (`memagent.model.write_memory`) recalls them: the episode's fact writes
among the writes that best match its questions, `read_writes` of them. There each fact holds
K of a few hundred memory tokens, with no copies of itself, beside writes that share its
questions' words: the model learns to find one write among look-alikes, the read the default
makes.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memagent.model.memory_pool import MemoryPool
from memagent.model.memoryllm import MemoryLLM
from memagent.model.recall_keys import LexicalKeys
from memagent.model.write_memory import best_matches
from memagent.train.adapter import AdapterShape, export_adapter, trainable_state
from memagent.train.episodes import Episode, EpisodeMaker, Schedule, Target

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    steps: int = 1200
    lr: float = 1e-3
    warmup_steps: int = 20
    text_weight: float = 0.5  # weight of general-text loss next to the answers' loss
    checkpoint_every: int = 50
    max_minutes: float | None = None  # stop (and export) after this much training time, resumes included
    seed: int = 0
    carry_share: float = 0.7  # share of episodes that start from the pool the previous one left
    read_share: float = 0.0  # share of reads that see `read_writes` whole writes instead of the pool
    read_writes: int = 4
    schedule: Schedule = field(default_factory=Schedule)
    adapter: AdapterShape = field(default_factory=AdapterShape)


def write_episode(model: MemoryLLM, episode: Episode, seed: int, start: torch.Tensor | None = None):
    """The pool after the episode's writes, starting from memory `start` [L, N, d] or empty,
    and each write's new memory tokens [L, n, d]."""
    pool = model.new_pool(seed=seed, memory=start)
    written = []
    for ids, learn in episode.writes:
        tensor = torch.tensor([ids], device=model.device)
        with torch.set_grad_enabled(learn):
            new = model.new_memory(tensor, pool.memory if pool.initialized else None)
        pool.write(new)
        written.append(new)
    return pool, written


def some_writes(
    episode: Episode,
    written: list[torch.Tensor],
    count: int,
    earlier: list[tuple[torch.Tensor, torch.Tensor]],
    keys: Callable[[torch.Tensor], torch.Tensor],
    write_keys: list[torch.Tensor],
) -> torch.Tensor:
    """A memory [L, count * K, d] of whole writes, as a long-term memory of whole writes recalls
    them for the episode's questions: its learned writes (its facts), then, to `count`, those of
    its other writes and of `earlier` ones ((new memory, key) pairs) whose keys best match the
    questions' (`best_matches`); the earlier writes first, then the episode's, in the order
    written. A read places the best match last instead; the shipped adapter, trained so, reads
    that order better (docs/default_model.md, "Why the best match goes last")."""
    learned = [i for i, (_, learn) in enumerate(episode.writes) if learn][:count]
    own = [i for i in range(len(written)) if i not in learned]
    candidates = [key for _, key in earlier] + [write_keys[i] for i in own]
    asked = [keys(torch.tensor(t.prompt)) for t in episode.targets if t.kind == "qa"]
    question = torch.cat(asked).unique() if asked else torch.zeros(0, dtype=torch.long)
    ends = torch.tensor([len(key) for key in candidates], dtype=torch.long).cumsum(0)
    key_ids = torch.cat(candidates) if candidates else torch.zeros(0, dtype=torch.long)
    best = sorted(best_matches(key_ids, ends, question, count - len(learned)).tolist())
    before = [earlier[i][0] for i in best if i < len(earlier)]
    chosen = sorted(learned + [own[i - len(earlier)] for i in best if i >= len(earlier)])
    return torch.cat(before + [written[i] for i in chosen], dim=1)


def batch_targets(targets: list[Target], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Left-padded ids, attention mask and labels (-100 everywhere but completions)."""
    rows = [t.prompt + t.completion for t in targets]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, t) in enumerate(zip(rows, targets)):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
        labels[i, width - len(t.completion) :] = torch.tensor(t.completion)
    return ids.to(device), mask.to(device), labels.to(device)


def episode_loss(
    model: MemoryLLM,
    episode: Episode,
    seed: int,
    text_weight: float,
    pad_id: int,
    start: torch.Tensor | None = None,
    read: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], MemoryPool, list[torch.Tensor]]:
    """({"loss": total, "qa": answer loss, "text": general-text loss}, the pool, each write's
    new memory) for one episode. The targets read the pool, or with `read` the memory it makes
    of the writes' new memories."""
    pool, written = write_episode(model, episode, seed, start)
    reader = pool if read is None else MemoryPool(read(written), initialized=True)
    ids, mask, labels = batch_targets(episode.targets, pad_id, model.device)
    logits = model(ids, mask, pool=reader).logits[:, :-1].float()
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none")
    parts = {}
    for kind in ("qa", "text"):
        rows = torch.tensor([t.kind == kind for t in episode.targets], device=model.device)
        chosen = (labels[:, 1:] != -100) & rows[:, None]
        if chosen.any():
            parts[kind] = token_loss[chosen].mean()
    weights = {"qa": 1.0, "text": text_weight}
    parts["loss"] = sum(weights[k] * v for k, v in parts.items())
    return parts, pool, written


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """Trains `model` (already made trainable) on episodes; checkpoints into `run_dir`."""

    def __init__(self, model: MemoryLLM, episodes: EpisodeMaker, config: TrainConfig, run_dir: str | Path):
        self.model = model
        self.episodes = episodes
        self.config = config
        self.run_dir = Path(run_dir)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=0.0)
        self.step = 0
        self.seconds = 0.0  # training time so far, across resumes: `max_minutes` bounds the whole run
        self.carried: torch.Tensor | None = None  # the memory the last episode left; a resumed run starts empty
        # Recent writes' (new memory, key), for reads of a few writes.
        self.earlier: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=64)
        # Recall as the shipped adapter was trained: whole texts keyed, the question frame's words in no key.
        self.keys = LexicalKeys(episodes.tokenizer, left_out=episodes.question_prompt(""), words_alone=False)
        self.pad_id = episodes.tokenizer.pad_token_id or 0

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "seconds": self.seconds,
            "trainable": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, self.run_dir / f"{CHECKPOINT}.tmp")
        (self.run_dir / f"{CHECKPOINT}.tmp").replace(self.run_dir / CHECKPOINT)
        export_adapter(self.model, self.run_dir / "adapter")

    def resume(self) -> bool:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.model.device)
        self.model.load_state_dict(state["trainable"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.seconds = state.get("seconds", 0.0)
        return True

    def train_step(self) -> dict[str, float]:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(c, self.step)
        rng = random.Random(c.seed * 1_000_003 + self.step)
        episode = self.episodes(self.step)
        blank = not episode.writes  # read from an empty memory, and leave the carried one as it was
        carry = self.carried is not None and rng.random() < c.carry_share and not blank
        seed = c.seed + self.step
        start = self.carried if carry else None
        write_keys = [self.keys(torch.tensor(ids)) for ids, _ in episode.writes]
        read = None
        if rng.random() < c.read_share and not blank:
            earlier = list(self.earlier)
            read = functools.partial(
                some_writes, episode, count=c.read_writes, earlier=earlier, keys=self.keys, write_keys=write_keys
            )
        parts, pool, written = episode_loss(self.model, episode, seed, c.text_weight, self.pad_id, start, read)
        if not blank:
            self.carried = pool.memory.detach()
        self.earlier.extend((new.detach(), key) for new, key in zip(written, write_keys))
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {k: v.item() for k, v in parts.items()}

    def out_of_time(self) -> bool:
        return self.config.max_minutes is not None and self.seconds > 60 * self.config.max_minutes

    def train(self) -> None:
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "train_config.json").write_text(json.dumps(asdict(c), indent=1) + "\n")
        log = (self.run_dir / "log.jsonl").open("a")
        averages = {}
        bar = tqdm(total=c.steps, initial=self.step, desc="training", unit="step")
        while self.step < c.steps and not self.out_of_time():
            began = time.monotonic()
            metrics = self.train_step()
            self.seconds += time.monotonic() - began
            averages = {k: 0.95 * averages.get(k, v) + 0.05 * v for k, v in metrics.items()}
            bar.update()
            bar.set_postfix({k: f"{v:.3f}" for k, v in averages.items()})
            log.write(json.dumps({"step": self.step, "seconds": round(self.seconds, 1), **metrics}) + "\n")
            log.flush()
            if self.step % c.checkpoint_every == 0 or self.step == c.steps or self.out_of_time():
                self.save()
        bar.close()
        log.close()
