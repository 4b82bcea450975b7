"""How much the memory raises the likelihood of an answer: evidence for abstaining without training.

`memory_gain` is the answer's mean log-probability per token read with the memory minus read
with an empty memory. An answer copied from a told fact gains a lot; a guess the model would
make anyway gains little.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memagent.model.memory_pool import MemoryPool
from memagent.model.memoryllm import MemoryLLM


def answer_logprobs(model: MemoryLLM, pool: MemoryPool, prompt: Sequence[int], answer: Sequence[int]) -> torch.Tensor:
    """log p(answer token i | prompt, answer tokens before i), reading `pool`: [len(answer)]."""
    if not prompt or not answer:
        raise ValueError("prompt and answer must each hold at least one token")
    ids = torch.tensor([[*prompt, *answer]], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        logits = model(ids, pool=pool).logits[0, len(prompt) - 1 : -1].float()
    targets = ids[0, len(prompt) :, None]
    return logits.log_softmax(-1).gather(-1, targets).squeeze(-1)


class MemoryGain:
    """`memory_gain` for one model, keeping one empty pool to compare against."""

    def __init__(self, model: MemoryLLM):
        self.model = model
        self.empty = model.new_pool()

    def __call__(self, pool: MemoryPool, prompt: Sequence[int], answer: Sequence[int]) -> float:
        with_memory = answer_logprobs(self.model, pool, prompt, answer)
        without = answer_logprobs(self.model, self.empty, prompt, answer)
        return (with_memory - without).mean().item()
