"""Which of several writes about one subject answers a question: a learned ranker.

Recall keys are words, and a question often shares no word with the write that answers it but
the subject's name: "What is Gemma's profession?" meets "Gemma Fischer earns a living as a
locksmith." and "If Gemma Quinn could paint everything one colour, it would be cyan." alike.
The model itself knows better: its hidden states, averaged over a text's tokens at `depth`
layers (no memory read), place a question near the writes that answer it. Two linear maps take
question and write states to a small space where a scaled cosine scores them; they are trained
(`memagent train-ranker`, `memagent.train.ranker`) with a softmax over each question's right
write and look-alikes: others about the same subject, and other facts.

Kept in `ranker.safetensors` beside an adapter's weights; the depth is in its metadata.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torch.nn import functional as F

from memagent.model.loading import CheckpointError
from memagent.model.memoryllm import MemoryLLM

RANKER_FILE = "ranker.safetensors"
# Texts whose states are computed in one forward pass, at most: bounds a pass's memory.
STATE_BATCH = 64


class WriteRanker(nn.Module):
    def __init__(self, hidden_size: int, depth: int, dim: int = 128):
        super().__init__()
        self.depth = depth
        self.question = nn.Linear(hidden_size, dim)
        self.write = nn.Linear(hidden_size, dim)
        self.scale = nn.Parameter(torch.tensor(10.0))
        # The states' mean and spread over training texts: inputs to the maps are standardized.
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))

    @torch.inference_mode()
    def states(self, model: MemoryLLM, texts: list[torch.Tensor]) -> torch.Tensor:
        """[n, d]: each text's (token ids) hidden states after `depth` layers, averaged."""
        out = []
        for start in range(0, len(texts), STATE_BATCH):
            batch = texts[start : start + STATE_BATCH]
            ids = nn.utils.rnn.pad_sequence([t.to(torch.long) for t in batch], batch_first=True)
            real = nn.utils.rnn.pad_sequence([torch.ones(len(t)) for t in batch], batch_first=True)
            hidden = model.text_states(ids.to(model.device), self.depth).float().cpu()
            out.append((hidden * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1))
        return torch.cat(out)

    def forward(self, questions: torch.Tensor, writes: torch.Tensor) -> torch.Tensor:
        """Scores [..., n]: each question state [..., d] against its writes' states [..., n, d];
        higher answers better."""
        q = F.normalize(self.question((questions - self.mean) / self.std), dim=-1)
        w = F.normalize(self.write((writes - self.mean) / self.std), dim=-1)
        return self.scale * (w @ q.unsqueeze(-1)).squeeze(-1)

    # -- on disk ---------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / RANKER_FILE
        state = {name: tensor.detach().float().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(path), metadata={"depth": str(self.depth)})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> WriteRanker | None:
        """The ranker kept in `folder`, or None if it has none."""
        path = Path(folder) / RANKER_FILE
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                depth = int((f.metadata() or {})["depth"])
            state = load_file(str(path))
            dim, hidden_size = state["question.weight"].shape
            ranker = cls(hidden_size, depth, dim)
            ranker.load_state_dict(state)
        except Exception as error:  # a damaged or foreign file: say which, whatever broke
            raise CheckpointError(f"{path}: not a write ranker ({type(error).__name__}: {error})") from error
        return ranker.eval()
