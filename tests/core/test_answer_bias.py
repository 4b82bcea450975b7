"""Answers lean on the best match: `ask` adds logits to the tokens spelled as the words of the
write its read places nearest the question (but the chat frame's), and to those of "I don't
know." (less where only writes about the question's subject may answer); other reads do not."""

import pytest
import torch

import memagent
from memagent import MemoryLLM
from memagent import engine as engine_module
from memagent.abstention import ABSTENTION
from memagent.engine import ABSTENTION_COPY_BIAS, COPY_BIAS, SUBJECT_ABSTENTION_COPY_BIAS
from memagent.model.generation import stream
from memagent.model.shapes import shape_config
from memagent.sampling import SamplingParams


@pytest.fixture(scope="module")
def writes_engine() -> memagent.Engine:
    return memagent.load("random:tiny-writes")


def _reading(engine: memagent.Engine, pool, questions: list[str]):
    prompts = [engine.question_prompt(q) for q in questions]
    encoded = engine.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    return engine.answer_reading(pool, prompts, encoded["input_ids"], encoded["attention_mask"])


def _written(engine: memagent.Engine, name: str):
    pool = engine.pool(name)
    pool.inject("Ottilie keeps a parrot called Ravi.", progress=False)
    pool.inject("Zoltan repairs clocks in Graz.", progress=False)
    return pool


def test_the_bias_lifts_the_best_matchs_words_the_question_does_not_use(writes_engine):
    pool = _written(writes_engine, "bias")
    bias, _, _ = _reading(writes_engine, pool.pool, ["What does Ottilie keep?", "Who repairs clocks?"])
    assert bias.shape == (2, writes_engine.model.config.vocab_size)
    abstaining = set(writes_engine.encode(ABSTENTION))
    ottilie, zoltan = bias.tolist()
    for word in (" parrot", " called"):
        assert all(ottilie[t] == COPY_BIAS for t in writes_engine.encode(word)), word
    assert all(ottilie[t] == 0 for t in writes_engine.encode(" a")), "a word of the chat frame"
    for word in (" Zoltan", " Graz"):  # another write's
        assert all(ottilie[t] == 0 for t in writes_engine.encode(word) if t not in abstaining), word
    assert all(zoltan[t] == COPY_BIAS for t in writes_engine.encode(" Graz"))
    assert all(zoltan[t] == 0 for t in writes_engine.encode(" parrot")), "another write's"
    assert all(zoltan[t] == 0 for t in writes_engine.encode(" clocks")), "the question's own"
    # Ottilie's question may only be answered from her write, so "I don't know." leans less.
    for row, leaning in ((ottilie, SUBJECT_ABSTENTION_COPY_BIAS), (zoltan, ABSTENTION_COPY_BIAS)):
        leans = {row[t] for t in abstaining}
        assert leaning in leans and leans <= {leaning, COPY_BIAS}  # COPY_BIAS: a word of the write's too
        assert sum(v > 0 for v in row) < 0.01 * len(row), "a few words' tokens, not the vocabulary"


def test_only_a_memory_of_whole_writes_biases_answers(writes_engine, tiny_engine):
    question = ["What does Ottilie keep?"]
    assert _reading(writes_engine, writes_engine.pool("empty").pool, question) is None
    pool = tiny_engine.pool("pool-only")
    pool.inject("Ottilie keeps a parrot called Ravi.", progress=False)
    assert _reading(tiny_engine, pool.pool, question) is None


@pytest.mark.parametrize("sampled", [False, True])
def test_a_logit_bias_steers_each_rows_tokens(sampled):
    model = MemoryLLM.from_random(shape_config("tiny"), seed=0)
    model.inject(torch.arange(100, 140)[None])
    ids = torch.tensor([[5, 17, 300, 42], [7, 8, 9, 10]])
    params = SamplingParams(max_new_tokens=5, do_sample=sampled, temperature=1.5, seed=3)

    def tokens(bias=None):
        return torch.stack(list(stream(model, ids, params, logit_bias=bias)), 1).tolist()

    bias = torch.zeros(2, model.config.vocab_size)
    bias[0, 77] = 1e4
    free, steered = tokens(), tokens(bias)
    assert steered[0] == [77] * 5 and steered[1] == free[1]
    assert tokens(torch.zeros_like(bias)) == free


def test_asks_alone_and_batched_read_with_their_own_bias(writes_engine, monkeypatch):
    monkeypatch.setattr(engine_module, "COPY_BIAS", 1e4)  # the best match's words, and only those
    pool = _written(writes_engine, "batched")
    questions = ["What does Ottilie keep?", "Who repairs clocks?"]
    options = dict(stop=["zzzz"], max_new_tokens=4)
    pieces = [list(writes_engine.answer(pool.pool, q, **options)) for q in questions]
    alone = [pool.ask(q, **options) for q in questions]
    assert ["".join(p).strip() for p in pieces] == alone
    prompts = [writes_engine.question_prompt(q) for q in questions]
    params = SamplingParams.for_ask(**options)
    together = writes_engine.complete(pool.pool, prompts, params, answers=True)
    assert [t.strip() for t in together] == alone
    assert writes_engine.complete(pool.pool, prompts, params) != together, "other reads are not biased"
    assert alone[0] != alone[1]
    for answer, write in zip(pieces, ["ottilie keeps a parrot called ravi.", "zoltan repairs clocks in graz."]):
        assert all(piece.strip().lower() in write for piece in answer), answer
