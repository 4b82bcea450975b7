"""The write ranker: states of texts as the model reads them, on disk, and in an ask, where it
orders the recalled writes about the question's subject (the shipped default's)."""

import pytest
import torch

import memagent
from memagent import Engine, MemoryLLM
from memagent.model.loading import CheckpointError
from memagent.model.shapes import shape_config
from memagent.model.write_ranker import RANKER_FILE, WriteRanker


@pytest.fixture(scope="module")
def model() -> MemoryLLM:
    return MemoryLLM.from_random(shape_config("tiny-writes"), seed=0)


def ranker_for(model: MemoryLLM, depth: int = 1) -> WriteRanker:
    torch.manual_seed(0)
    return WriteRanker(model.config.hidden_size, depth, dim=8).eval()


def test_a_texts_states_are_the_same_alone_or_padded_in_a_batch(model):
    ranker = ranker_for(model)
    texts = [torch.tensor([5, 6, 7, 8, 9]), torch.tensor([11, 12])]
    together = ranker.states(model, texts)
    for text, state in zip(texts, together):
        assert (ranker.states(model, [text])[0] - state).abs().max() < 1e-5
    assert together.shape == (2, model.config.hidden_size)


def test_text_states_read_no_memory_and_no_deeper_than_asked(model):
    ids = torch.tensor([[5, 6, 7]])
    pool = model.new_pool()
    model.inject(torch.arange(20, 30)[None], pool=pool)
    shallow, deep = model.text_states(ids, 1), model.text_states(ids, 2)
    assert not torch.equal(shallow, deep)
    with pytest.raises(ValueError, match="depth must be 1 to 2 layers, got 3"):
        model.text_states(ids, 3)


def test_a_ranker_round_trips_and_a_damaged_file_is_refused(model, tmp_path):
    ranker = ranker_for(model)
    question, *writes = ranker.states(model, [torch.tensor([5, 6]), torch.tensor([7, 8, 9]), torch.tensor([10])])
    ranker.save(tmp_path)
    again = WriteRanker.load(tmp_path)
    assert again.depth == 1
    with torch.no_grad():
        assert torch.allclose(again(question, torch.stack(writes)), ranker(question, torch.stack(writes)))
    assert WriteRanker.load(tmp_path / "elsewhere") is None, "no ranker there: none"
    (tmp_path / RANKER_FILE).write_bytes((tmp_path / RANKER_FILE).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a write ranker"):
        WriteRanker.load(tmp_path)


def test_an_engine_refuses_a_ranker_deeper_than_its_model(model):
    tokenizer = memagent.load("random:tiny-writes").tokenizer
    with pytest.raises(ValueError, match="the ranker reads layer 5; the model has 2"):
        Engine(model, tokenizer, ranker=ranker_for(model, depth=5))


def test_the_write_that_answers_goes_nearest_the_question(default_engine):
    """Four writes about four Liams share only "Liam" with each question: the keys alone would
    read the latest nearest the question, and asked for a phone number no write holds, the
    model copied "Toffee" from it. "Profession" meets "earns a living as", a held-out phrasing,
    only through the ranker trained on the shipped adapter's states (the earlier one answered
    "hamster")."""
    pool = default_engine.pool("liams")
    for text in (
        "These days Liam Larsen rents a flat in Gdansk.",
        "If Liam Thorne could paint everything one colour, it would be emerald.",
        "Liam Lund adopted a hamster and named it Toffee.",
        "Liam Rossi earns a living as a translator.",
    ):
        pool.inject(text, progress=False)
    question = "Which city does Liam call home?"

    def recalled(questions: list[str]) -> torch.Tensor:
        prompts = [default_engine.question_prompt(q) for q in questions]
        encoded = default_engine.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        return default_engine.answer_reading(pool.pool, prompts, encoded["input_ids"], encoded["attention_mask"])[2].writes

    alone = recalled([question])
    assert sorted(alone[0].tolist()) == [0, 1, 2, 3] and alone[0, -1] == 0
    store = pool.pool.long_term
    kept = {key: state.clone() for key, state in default_engine._write_states.items() if key[0] == store.uid}
    assert len(kept) == 4, "each write's states are kept: later asks pass only their question"
    assert pool.ask(question) == "Gdansk"
    assert pool.ask("What did Liam name the hamster?") == "Toffee"
    assert pool.ask("What colour would Liam pick if asked for a favourite?") == "emerald"
    assert pool.ask("What number do I dial to call Liam?") == "I don't know."
    assert pool.ask("What is Liam's profession?") == "translator"
    assert all(torch.equal(default_engine._write_states[key], state) for key, state in kept.items())
    questions = [question, "What did Liam name the hamster?", "What colour would Liam pick if asked for a favourite?"]
    together = recalled(questions)
    assert together[:, -1].tolist() == [0, 2, 1], "a batch's questions ranked together, each for itself"
    assert torch.equal(together, torch.cat([recalled([q]) for q in questions]))
