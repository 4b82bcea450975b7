"""The long-term memory's retriever phase on a tiny random model: labels, learning, export."""

import pytest
import torch
from safetensors.torch import load_file

from memagent import MemoryLLM, default_model
from memagent.model.config import MemoryLLMConfig
from memagent.model.retriever import Retriever
from memagent.model.shapes import shape_config
from memagent.model.write_memory import POOL_BLOCKS
from memagent.train.adapter import AdapterShape, export_adapter, make_trainable
from memagent.train.episodes import EpisodeMaker
from memagent.train.retriever import (
    DEFAULT_LONG_TERM,
    RETRIEVER_STATE,
    RetrieverConfig,
    StreamMaker,
    export_with_long_term,
    layer_loss,
    thinned,
    train_retriever,
    whole_writes,
    with_long_term,
)


@pytest.fixture(scope="module")
def maker():
    return EpisodeMaker(default_model.load_tokenizer(), lambda q: f"Q: {q}\nA: ", text_tokens=16)


@pytest.fixture(scope="module")
def model():
    return MemoryLLM.from_random(shape_config("tiny"), seed=0)


@pytest.fixture(scope="module")
def stream(model, maker):
    return StreamMaker(model, maker, RetrieverConfig(facts=4))(0)


def test_every_token_is_labelled_with_the_write_that_made_it(model, stream):
    K, L = model.config.num_tokens, model.config.num_hidden_layers
    writes = int(stream.origin.max()) + 1
    assert writes == 8  # four facts, each followed by one unrelated text
    counts = torch.bincount(stream.origin)
    assert counts[0] <= K and (counts[1:] == K).all()  # only the first write (empty pool) may be short
    assert stream.tokens.shape[:2] == (L, len(stream.origin))
    # Every question's answer is in a fact write (the even ones), and every fact is asked.
    assert set(stream.answer_write.tolist()) == {0, 2, 4, 6}
    assert stream.queries.shape[:2] == (L, len(stream.answer_write)) and stream.valid.any(1).all()


def test_a_thinned_stream_keeps_some_tokens_of_every_write_with_their_labels(stream):
    thin = thinned(stream, 3, torch.Generator().manual_seed(0))
    assert (torch.bincount(thin.origin) == 3).all()
    # Each kept token is one of the stream's tokens, still labelled with its own write.
    same = (thin.tokens[:, :, None] == stream.tokens[:, None]).all(-1).all(0)  # [kept, all]
    assert torch.equal(stream.origin[same.float().argmax(1)], thin.origin)
    assert thin.queries is stream.queries and torch.equal(thin.answer_write, stream.answer_write)


def test_the_retriever_learns_to_rank_the_answers_tokens_first(model, stream):
    retriever = Retriever(with_long_term(model.config, DEFAULT_LONG_TERM))
    optimizer = torch.optim.AdamW(retriever.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = sum(layer_loss(retriever, i, stream, 0.05)[0] for i in range(len(retriever.layers)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_finished_phase_is_taken_from_the_run_folder(model, maker, tmp_path):
    config = RetrieverConfig(minutes=0, facts=2)
    first = train_retriever(model, maker, DEFAULT_LONG_TERM, config, tmp_path)
    assert (tmp_path / RETRIEVER_STATE).exists()
    again = train_retriever(model, maker, DEFAULT_LONG_TERM, config, tmp_path)
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_the_exported_adapter_loads_with_a_long_term_memory(model, tmp_path):
    trainable = make_trainable(MemoryLLM.from_random(shape_config("tiny"), seed=0), AdapterShape(rank=4, alpha=8.0))
    export_adapter(trainable, tmp_path)
    retriever = Retriever(with_long_term(model.config, DEFAULT_LONG_TERM))
    export_with_long_term(tmp_path, DEFAULT_LONG_TERM, retriever)

    config = MemoryLLMConfig.from_json(tmp_path / "config.json")
    assert config.long_term == DEFAULT_LONG_TERM
    assert config.num_memory_tokens == model.config.num_memory_tokens  # the short-term pool is unchanged
    loaded = MemoryLLM.from_state(config, model.state_dict() | load_file(tmp_path / "adapter.safetensors"))
    for a, b in zip(retriever.parameters(), loaded.retriever.parameters()):
        assert torch.equal(a, b)
    pool = loaded.new_pool()
    for step in range(3):
        loaded.inject(torch.randint(3, 100, (1, 8)), pool=pool)
    assert pool.long_term.sizes() == [2 * config.num_tokens] * config.num_hidden_layers


def test_an_adapter_exported_with_whole_writes_recalls_them_and_has_no_retriever(model, tmp_path):
    trainable = make_trainable(MemoryLLM.from_random(shape_config("tiny"), seed=0), AdapterShape(rank=4, alpha=8.0))
    export_adapter(trainable, tmp_path)
    export_with_long_term(tmp_path, whole_writes(3))

    config = MemoryLLMConfig.from_json(tmp_path / "config.json")
    assert config.long_term.ltm_recall == "writes" and config.long_term.num_ltm_blocks == 3
    assert config.num_memory_tokens == POOL_BLOCKS * config.num_tokens, "a pool that gives writes their context"
    assert not [k for k in load_file(tmp_path / "adapter.safetensors") if k.startswith("retriever.")]
    loaded = MemoryLLM.from_state(config, model.state_dict() | load_file(tmp_path / "adapter.safetensors"))
    assert loaded.retriever is None
    pool = loaded.new_pool()
    for step in range(4):
        loaded.inject(torch.randint(3, 100, (1, 8)), pool=pool)
    assert pool.long_term.num_writes == 4
    assert loaded(torch.tensor([[5, 6]]), pool=pool).long_term_order.shape == (1, 2, 3)
