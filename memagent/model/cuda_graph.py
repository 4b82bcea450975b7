"""The decode step captured once in a CUDA graph and replayed for every token.

Eager decoding of a large model is bound by kernel launches on a slow host CPU; a replayed
graph launches the whole step at once. Everything the step touches is static: the K/V cache
buffers, the key-validity mask, and the three small input tensors copied in before each replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from memagent.model.kv_cache import KVCache
    from memagent.model.memoryllm import MemoryLLM

WARMUP_STEPS = 2


class GraphedDecodeStep:
    def __init__(self, model: MemoryLLM, cache: KVCache, batch_size: int, first_slot: int):
        device = model.device
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        # Warm-up and capture write into `first_slot`, which the first real step overwrites.
        self.slot = torch.tensor([first_slot], device=device)
        step = lambda: model.decode_step(self.tokens, self.positions, self.slot, cache)  # noqa: E731
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(WARMUP_STEPS):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.logits = step()

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Same signature as MemoryLLM.decode_step; `cache` must be the one captured."""
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.slot.copy_(slot)
        self.graph.replay()
        return self.logits
