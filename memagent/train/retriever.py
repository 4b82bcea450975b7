"""Training a retriever for M+'s kind of long-term memory on the default (`memagent train
--long-term tokens`, after the adapter; the shipped default recalls whole writes instead).

A read of layer l scores every long-term token j against the prompt as
mean_t sigmoid(q_t . key_j) (`memagent.model.retriever`) and takes the M best. The retriever
learns which tokens to bring back: in each episode the trained model writes a stream of
facts and unrelated text into a pool, each fact's question is read against that pool, and,
per layer, the tokens the fact's write made must outscore every other write's tokens
(a softmax over all candidates, maximising the share that lands on the fact's tokens).

The model itself stays frozen: a memory token is the same whether it sits in the pool or in
the long-term store, so the adapter trained on the pool already reads what is retrieved.
Layers score independently, so each layer's loss is backpropagated on its own, which keeps
only one layer's scores alive at a time.

Writing a stream costs far more than learning from it, so streams are replayed: each step
learns from the newest stream and a few earlier ones, kept thinned to a share of each
write's tokens so that many fit in memory.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from memagent.model.config import LongTermConfig, MemoryLLMConfig
from memagent.model.memoryllm import MemoryLLM
from memagent.model.retriever import Retriever
from memagent.model.write_memory import POOL_BLOCKS
from memagent.train.episodes import EpisodeMaker, FactDraw
from memagent.train.corpus import FactSampler
from memagent.train.varied import VariedSampler

# M+'s kind of long-term memory for the default (`memagent train --long-term tokens`): M = 4 * K
# = 256 tokens per layer per read, merged on every write and never decayed (a per-memory bound
# evicts instead, `engines`).
DEFAULT_LONG_TERM = LongTermConfig(
    num_ltm_blocks=4, selector_hidden_dim=64, update_ltm_frequency=1, decay_frequency=0.0,
    initial_rf_when_moving_stm_to_ltm=1.0,
)  # fmt: skip


def whole_writes(writes: int) -> LongTermConfig:
    """The default's long-term memory of whole writes, recalling `writes` per read."""
    return replace(DEFAULT_LONG_TERM, num_ltm_blocks=writes, ltm_recall="writes")


RETRIEVER_STATE = "retriever.pt"


@dataclass
class RetrieverConfig:
    minutes: float = 12.0  # wall time for the whole phase
    facts: int = 24  # facts per episode's stream
    texts_between: int = 1  # unrelated writes after each fact
    passes: int = 4  # optimizer steps on each episode's tokens
    replay: int = 24  # earlier streams kept for replay
    replayed: int = 3  # earlier streams each step learns from, besides the newest
    thinned_tokens: int = 16  # tokens of each write a replayed stream keeps
    lr: float = 3e-3
    temperature: float = 0.05  # scores lie in (0, 1); the softmax over candidates reads score / temperature
    seed: int = 0


@dataclass
class Stream:
    """One episode: the new memory tokens of every write, which write tells each question's
    answer, and the questions' layer inputs read against the pool the stream left."""

    tokens: torch.Tensor  # [L, n, d] every write's new memory tokens, normed by each layer's input_layernorm
    origin: torch.Tensor  # [n] the write each token came from
    queries: torch.Tensor  # [L, Q, T, d] normed layer inputs of the (left-padded) questions
    valid: torch.Tensor  # [Q, T] real question tokens
    answer_write: torch.Tensor  # [Q] the write holding each question's answer


def thinned(stream: Stream, per_write: int, generator: torch.Generator) -> Stream:
    """`stream` with `per_write` random tokens of each write (all where it has fewer)."""
    picks = []
    for write in stream.origin.unique().tolist():
        index = (stream.origin == write).nonzero().squeeze(1)
        picks.append(index[torch.randperm(len(index), generator=generator)[:per_write].to(index.device)])
    keep = torch.cat(picks).sort().values
    return replace(stream, tokens=stream.tokens[:, keep].clone(), origin=stream.origin[keep])


def with_long_term(config: MemoryLLMConfig, long_term: LongTermConfig) -> MemoryLLMConfig:
    """`config` (no long-term memory) plus `long_term`: M+'s keeps the short-term pool as it
    is; whole writes leave it the POOL_BLOCKS that give a write its context."""
    raw = config.to_dict() | asdict(long_term) | {"add_selector": True}
    pool_blocks = POOL_BLOCKS if long_term.ltm_recall == "writes" else config.num_blocks
    raw["num_blocks"] = pool_blocks + long_term.num_ltm_blocks
    return MemoryLLMConfig.from_dict(raw)


class StreamMaker:
    """Episodes of facts (the adapter's training mix of template and varied forms, train
    split) each followed by unrelated prose, written by `model` into a fresh pool."""

    def __init__(self, model: MemoryLLM, maker: EpisodeMaker, config: RetrieverConfig):
        self.model, self.maker, self.config = model, maker, config
        self.pad_id = maker.tokenizer.pad_token_id or 0

    @torch.no_grad()
    def __call__(self, index: int) -> Stream:
        c, model, K = self.config, self.model, self.model.config.num_tokens
        rng = random.Random(c.seed * 1_000_003 + index)
        templates = FactSampler(self.maker.split, seed=rng.randrange(2**32))
        varied = VariedSampler(self.maker.split, rng.randrange(2**32), self.maker.excluded)
        draw = FactDraw(templates, varied, self.maker.varied_share, rng)
        writes, questions = [], []
        for _ in range(c.facts):
            facts = draw.write(tool=True if rng.random() < 0.25 else None)
            questions += [(f.question, len(writes)) for f in facts]
            writes.append(self.maker.encode(facts[0].text)[:K])
            writes += [self.maker.text_chunk(rng) for _ in range(c.texts_between)]
        pool = model.new_pool(seed=index)
        new = [model.inject(torch.tensor([ids], device=model.device), pool=pool) for ids in writes]
        layers = model.model.layers
        tokens = torch.stack([layer.input_layernorm(torch.cat([n[i] for n in new])) for i, layer in enumerate(layers)])
        # A first write into an empty pool makes as many tokens as it has, the others K.
        sizes = torch.tensor([n.shape[1] for n in new], device=model.device)
        origin = torch.arange(len(writes), device=model.device).repeat_interleave(sizes)
        queries, valid = self._questions(pool, [q for q, _ in questions])
        answer_write = torch.tensor([w for _, w in questions], device=model.device)
        return Stream(tokens, origin, queries, valid, answer_write)

    def _questions(self, pool, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each layer's normed input for every question token, read against `pool`."""
        rows = [self.maker.encode(self.maker.question_prompt(q)) for q in questions]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
        layers = self.model.model.layers
        inputs = {layer: [] for layer in layers}  # a long prompt reaches a layer in chunks
        hooks = [
            layer.register_forward_pre_hook(lambda module, args: inputs[module].append(module.input_layernorm(args[0])))
            for layer in layers
        ]
        try:
            self.model(ids.to(self.model.device), mask.to(self.model.device), pool=pool)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack([torch.cat(inputs[layer], dim=1) for layer in layers]), mask.bool().to(self.model.device)


def layer_loss(retriever: Retriever, layer: int, stream: Stream, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax loss of one layer, and the share of each question's answer tokens that
    rank in the top 1/64 of the candidates (what a full store's M = 256 of 16,384 takes)."""
    keys = retriever.keys(layer, stream.tokens[layer])
    scores = retriever.scores(layer, stream.queries[layer], stream.valid, keys)  # [Q, n]
    positive = stream.origin[None, :] == stream.answer_write[:, None]
    logits = scores / temperature
    loss = (torch.logsumexp(logits, -1) - torch.logsumexp(logits.masked_fill(~positive, -torch.inf), -1)).mean()
    top = scores.topk(max(1, scores.shape[1] // 64), dim=-1).indices
    hits = positive.gather(1, top).sum(1) / positive.sum(1)
    return loss, hits.detach()


def train_retriever(
    model: MemoryLLM,
    maker: EpisodeMaker,
    long_term: LongTermConfig,
    config: RetrieverConfig,
    run_dir: str | Path,
    *,
    resume: bool = True,
) -> Retriever:
    """A retriever for `model` (frozen), trained for `config.minutes`; kept in run_dir, where a
    later run (`resume`) takes it instead of training again."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    retriever = Retriever(with_long_term(model.config, long_term)).to(model.device)
    path = run_dir / RETRIEVER_STATE
    if resume and path.exists():
        retriever.load_state_dict(torch.load(path, map_location=model.device))
        return retriever
    torch.manual_seed(config.seed)
    for layer in retriever.layers:
        for linear in layer.modules():
            if isinstance(linear, torch.nn.Linear):
                torch.nn.init.normal_(linear.weight, std=linear.in_features**-0.5)
    optimizer = torch.optim.AdamW(retriever.parameters(), lr=config.lr, weight_decay=0.0)
    streams = StreamMaker(model, maker, config)
    held_out = streams(-1)
    rng, generator = random.Random(config.seed), torch.Generator().manual_seed(config.seed)
    replay: list[Stream] = []
    log = (run_dir / "retriever_log.jsonl").open("a")
    start, episode = time.monotonic(), 0
    bar = tqdm(desc="retriever", unit="episode", total=None)
    while time.monotonic() - start < 60 * config.minutes:
        stream = streams(episode)
        for _ in range(config.passes):
            batch = [stream] + rng.sample(replay, min(len(replay), config.replayed))
            losses = []
            for layer in range(len(retriever.layers)):
                loss = sum(layer_loss(retriever, layer, s, config.temperature)[0] for s in batch) / len(batch)
                loss.backward()
                losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        replay.append(thinned(stream, config.thinned_tokens, generator))
        if len(replay) > config.replay:
            replay.pop(rng.randrange(len(replay)))
        episode += 1
        record = {"episode": episode, "seconds": round(time.monotonic() - start, 1), "loss": sum(losses) / len(losses)}
        if episode % 5 == 0:
            record["held_out_hits"] = held_out_hits(retriever, held_out, config.temperature)
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.update()
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k not in ("episode", "seconds")})
    bar.close()
    print(f"retriever: {episode} episodes; held-out share of answer tokens in the top 1/64: {held_out_hits(retriever, held_out, config.temperature):.3f}")
    torch.save(retriever.state_dict(), path)
    return retriever


@torch.no_grad()
def held_out_hits(retriever: Retriever, stream: Stream, temperature: float) -> float:
    """Mean over layers and questions of the answer tokens' share in the top 1/64."""
    return torch.stack([layer_loss(retriever, i, stream, temperature)[1] for i in range(len(retriever.layers))]).mean().item()


def export_with_long_term(folder: str | Path, long_term: LongTermConfig, retriever: Retriever | None = None) -> None:
    """Turn the exported adapter in `folder` into one with a long-term memory (and, for M+'s
    kind, its `retriever`)."""
    from memagent.default_model import ADAPTER_WEIGHTS

    folder = Path(folder)
    config = with_long_term(MemoryLLMConfig.from_json(folder / "config.json"), long_term)
    if retriever is not None:
        state = load_file(folder / ADAPTER_WEIGHTS)
        state |= {f"retriever.{k}": v.detach().float().contiguous().cpu() for k, v in retriever.state_dict().items()}
        save_file(state, folder / ADAPTER_WEIGHTS)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=1, default=str) + "\n")
