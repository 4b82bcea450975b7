"""Abstention: the one answer "I don't know.", given by the model or, for a memory of whole
writes, without reading when the question names what no write holds; and the memory-gain score
a rule can use."""

import pytest
import torch

import memagent
from memagent import answer_spans
from memagent import engine as engine_module
from memagent.engine import CHECKED_NAMES
from memagent.abstention import ABSTENTION, is_abstention, names_in
from memagent.sampling import Usage
from memagent.memory_gain import MemoryGain, answer_logprobs
from tests.abstaining import abstaining_engine


def test_an_abstention_is_i_dont_know_and_nothing_else():
    assert ABSTENTION == "I don't know."
    assert is_abstention("I don't know.") and is_abstention(" i don't know\n") and is_abstention("I DON'T KNOW")
    assert not is_abstention("I don't know, maybe Oslo.") and not is_abstention("Oslo") and not is_abstention("")


def test_ask_returns_the_abstention_as_the_model_says_it():
    pool = abstaining_engine().pool("never-told")
    assert pool.ask("Who drives a red van?") == ABSTENTION
    pool.inject("Raul drives a blue bus.", progress=False)
    assert pool.ask("Who drives a red van?") == ABSTENTION


def test_answer_logprobs_are_the_models_own(tiny_engine):
    pool = tiny_engine.pool("scored")
    pool.inject("Mia lives in Lisbon.", progress=False)
    prompt, answer = tiny_engine.encode("Where does Mia live?"), tiny_engine.encode(" Lisbon")
    ids = torch.tensor([prompt + answer])
    with torch.inference_mode():
        logits = tiny_engine.model(ids, pool=pool.pool).logits[0].float().log_softmax(-1)
    expected = torch.stack([logits[len(prompt) - 1 + i, t] for i, t in enumerate(answer)])
    torch.testing.assert_close(answer_logprobs(tiny_engine.model, pool.pool, prompt, answer), expected)
    with pytest.raises(ValueError, match="at least one token"):
        answer_logprobs(tiny_engine.model, pool.pool, prompt, [])


def test_an_empty_memory_gains_nothing_and_a_written_one_changes_the_answer(tiny_engine):
    gain = MemoryGain(tiny_engine.model)
    prompt, answer = tiny_engine.encode("Where does Mia live?"), tiny_engine.encode(" Lisbon")
    pool = tiny_engine.new_pool()
    assert gain(pool, prompt, answer) == 0.0
    tiny_engine.write(pool, "Mia lives in Lisbon.", progress=False)
    assert gain(pool, prompt, answer) != 0.0


@pytest.mark.parametrize(
    "question, names",
    [
        ("What is Zoltan's profession?", ["Zoltan"]),
        ("Which gate does flight KL 1021 leave from?", ["KL", "1021"]),
        ("Who drives a red van?", []),
        ("I think so. Where does O'Neill live?", ["O'Neill"]),
        ("Is \"Bob\" on PostgreSQL v5.1.6?", ["Bob", "PostgreSQL", "v5.1.6"]),
    ],
)
def test_the_names_a_question_uses(question, names):
    assert names_in(question) == names


@pytest.fixture(scope="module")
def writes_engine() -> memagent.Engine:
    return memagent.load("random:tiny-writes")


def test_a_memory_of_whole_writes_abstains_without_reading_on_names_no_write_holds(writes_engine):
    pool = writes_engine.pool("names")
    steps, prefills = writes_engine.batch.steps, writes_engine.batch.prefills
    assert pool.ask("Who drives a red van?") == ABSTENTION, "an empty memory holds nothing"
    pool.inject("Ottilie keeps a parrot called Ravi.", progress=False)
    pool.inject("The depot on Quay 7 closes at nine.", progress=False)
    assert pool.ask("What does Zoltan keep?") == ABSTENTION
    assert pool.ask("When does the depot on Quay 8 close?") == ABSTENTION
    assert (writes_engine.batch.steps, writes_engine.batch.prefills) == (steps, prefills), "nothing was read"
    # Held, however the question spells them: after a space, in another case, with "'s".
    held = ("What does ottilie keep?", "Who owns Ravi's cage?", "When does Quay 7 close?", "Who drives a red van?")
    for question in held:
        assert not writes_engine.abstains(pool.pool, question), question
    pool.ask("What bird does Ottilie keep?")
    assert writes_engine.batch.prefills == prefills + 1


def test_a_name_held_only_inside_longer_words_is_not_held(writes_engine):
    pool = writes_engine.pool("whole words")
    pool.inject("Bruno Larsen turns a year older each July.", progress=False)
    pool.inject("Build 77411 failed at stage 10 of the tidewater ci.", progress=False)
    pool.inject("Flight KL1021 leaves from gate B4.", progress=False)
    for question in ("What is Lars's profession?", "At which stage did build 774 fail?"):
        assert writes_engine.abstains(pool.pool, question), question
    held = ("When is Bruno's birthday?", "Which runner does the tidewater CI use?", "Where does KL 1021 leave from?")
    for question in held:  # in another case; letters and digits of a code written together
        assert not writes_engine.abstains(pool.pool, question), question
    store = pool.pool.long_term
    naming = writes_engine._naming(store, ["Larsen", "Bruno", "CI"]).tolist()
    assert naming == [[True, False, False], [True, False, False], [False, True, False]]
    assert writes_engine._naming(store, ["Lars"], [1, 0]).tolist() == [[False, False]]


def test_writes_without_their_texts_name_what_their_keys_hold(writes_engine):
    pool = writes_engine.pool("keys only")
    pool.inject("Bruno Larsen turns a year older each July.", progress=False)
    store = pool.pool.long_term
    store.text_ids, store.text_ends = store.text_ids[:0], torch.zeros_like(store.text_ends)  # as stores once were
    assert not writes_engine.abstains(pool.pool, "What is Lars's profession?"), "its key holds the tokens of Lars"


def test_a_name_only_evicted_writes_held_is_no_longer_held(writes_engine):
    slots = writes_engine.model.config.long_term_slots
    bounded = memagent.Engine(writes_engine.model, writes_engine.tokenizer, max_long_term_tokens=slots)  # R writes
    pool = bounded.pool("evicted")
    pool.inject("Zygmunt repairs clocks.", progress=False)
    assert not bounded.abstains(pool.pool, "What does Zygmunt repair?")
    for i in range(pool.pool.long_term.config.num_ltm_blocks):
        pool.inject(f"The depot's door number {i} is painted green.", progress=False)
    assert bounded.abstains(pool.pool, "What does Zygmunt repair?")


def test_an_abstention_without_reading_reports_its_usage(writes_engine):
    pool = writes_engine.pool("usage")
    pool.inject("Ottilie keeps a parrot.", progress=False)
    answer = writes_engine.answer(pool.pool, "What does Zoltan keep?")
    assert answer.usage is None
    assert list(answer) == [ABSTENTION]
    prompt = len(writes_engine.encode(writes_engine.question_prompt("What does Zoltan keep?")))
    assert answer.usage == Usage(prompt, 0, "stop", pool.step)
    closed = writes_engine.answer(pool.pool, "What does Zoltan keep?")
    closed.close()
    assert closed.usage.finish_reason == "cancelled"


def test_a_question_is_checked_for_its_first_distinct_names_only(writes_engine):
    """A crafted question with thousands of names costs no more than one with CHECKED_NAMES."""
    pool = writes_engine.pool("many-names")
    held = " ".join(f"Ravi{i}" for i in range(CHECKED_NAMES))
    pool.inject(f"Ottilie keeps parrots: {held}.", progress=False)
    assert not writes_engine.abstains(pool.pool, f"Are {held} and Zoltan here?"), "Zoltan comes 17th"
    assert writes_engine.abstains(pool.pool, f"Are Zoltan and {held} here?")
    assert writes_engine.abstains(pool.pool, f"Are {'Ravi0 ' * 100}and Zoltan here?"), "a name counts once"


def test_a_grounded_answer_needs_one_write_holding_the_questions_names_and_the_answer(writes_engine):
    pool = writes_engine.pool("grounding")
    pool.inject("Ottilie keeps a parrot called Ravi.", progress=False)
    pool.inject("Zoltan repairs clocks in Graz.", progress=False)
    supported = writes_engine.grounding(pool.pool, "What does Ottilie keep?")
    assert supported("a parrot") and supported("Ravi") and supported(" parrot")
    assert not supported("clocks"), "a look-alike copy: Zoltan's write holds it, and not Ottilie"
    assert not supported("a dog"), "no write holds it"
    assert supported("Ottilie"), "the question's own words"
    assert supported(ABSTENTION)
    unnamed = writes_engine.grounding(pool.pool, "Who repairs clocks?")
    assert unnamed("Zoltan") and unnamed("Ravi") and not unnamed("Berlin")
    pool.inject("Ottilie also keeps a dog.", progress=False)
    assert not supported("a dog"), "a write after the read grounds nothing"
    assert writes_engine.grounding(pool.pool, "What does Ottilie keep?")("a dog")


def test_a_grounded_ask_is_the_answer_or_i_dont_know(writes_engine, monkeypatch):
    for bias in ("COPY_BIAS", "ABSTENTION_COPY_BIAS", "SUBJECT_ABSTENTION_COPY_BIAS"):
        monkeypatch.setattr(engine_module, bias, 0.0)  # the random model's own answers
    monkeypatch.setattr(answer_spans, "NEAR_BIAS", 0.0)
    pool = writes_engine.pool("grounded-ask")
    pool.inject("Ottilie keeps a parrot called Ravi.", progress=False)
    pool.inject("Zoltan repairs clocks in Graz.", progress=False)
    # The random model copies words of a recalled write: grounded for a question about Ottilie or
    # naming nobody; not for one about Zoltan and Ravi, which no write holds both of, when it
    # copies a word of one that the question does not use.
    sampled = dict(do_sample=True, temperature=1.5, seed=1, stop=["zzzz"], max_new_tokens=4)
    cases = [("What does Ottilie keep?", {}, True), ("Who repairs clocks?", sampled, True)]
    cases += [("Does Zoltan keep Ravi?", sampled, False), ("Does Zoltan keep Ravi?", {}, False)]
    for question, options, grounded_answer in cases:
        plain = writes_engine.answer(pool.pool, question, **options)
        text = "".join(plain)
        grounded = writes_engine.answer(pool.pool, question, grounded=True, **options)
        pieces = []
        while grounded.usage is None:  # set with the last piece
            pieces.append(next(grounded))
        assert list(grounded) == []
        supported = writes_engine.grounding(pool.pool, question)(text.strip())
        assert "".join(pieces) == (text if supported else ABSTENTION) and not any(pieces[:-1])
        assert grounded.usage == plain.usage
        assert pool.ask(question, grounded=True, **options) == (text.strip() if supported else ABSTENTION)
        assert supported == grounded_answer, text
    assert pool.ask("What does Xavier keep?", grounded=True) == ABSTENTION  # no write names Xavier: not read


def test_grounded_answers_need_a_memory_of_whole_writes(tiny_engine):
    pool = tiny_engine.pool("pool-only")
    pool.inject("Mia lives in Lisbon.", progress=False)
    with pytest.raises(ValueError, match="whole writes"):
        pool.ask("Where does Mia live?", grounded=True)
