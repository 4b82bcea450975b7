"""General ability: perplexity of held-out prose, with and without a memory in use."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memagent.engine import Engine
from memagent.model.memory_pool import MemoryPool
from memagent.train.corpus import prose_tokens


def held_out_chunks(tokenizer, count: int, length: int, seed: int) -> list[list[int]]:
    """`count` windows of `length` tokens from prose that training never saw."""
    stream = prose_tokens(tokenizer, "eval")
    rng = random.Random(seed)
    starts = sorted(rng.sample(range(len(stream) - length), count))
    return [stream[s : s + length] for s in starts]


@torch.inference_mode()
def perplexity(engine: Engine, chunks: list[list[int]], pool: MemoryPool, desc: str) -> float:
    total, tokens = 0.0, 0
    for chunk in tqdm(chunks, desc=desc, unit="chunk"):
        ids = torch.tensor([chunk], device=engine.device)
        logits = engine.model(ids, pool=pool).logits[0, :-1].float()
        total += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        tokens += len(chunk) - 1
    return math.exp(total / tokens)
