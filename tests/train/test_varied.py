"""The varied forms: exact strings, nested JSON, chats, two facts in one sentence."""

import json

import pytest

from memagent.train.corpus import _held_out
from memagent.train.varied import FORMS, TOOLS, VariedSampler, unusual_name, version


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("form", FORMS)
def test_each_answer_is_copied_from_the_text_and_absent_from_the_question(split, form):
    sampler = VariedSampler(split, seed=4)
    for _ in range(30):
        for fact in sampler.facts(form):
            assert fact.answer in fact.text, fact
            assert fact.answer.lower() not in fact.question.lower(), fact


def test_nested_json_asks_one_field_among_several():
    sampler = VariedSampler("train", seed=6)
    for _ in range(30):
        [fact] = sampler.facts("json")
        document = json.loads(fact.text)
        assert any(isinstance(v, dict | list) for v in document.values())
        assert fact.text.count(":") >= 4  # the id and at least two fields, one level down or more


def test_a_sentence_holding_two_facts_asks_each_on_its_own():
    first, second = VariedSampler("train", seed=8).facts("pair")
    assert first.text == second.text
    assert first.question != second.question and first.answer != second.answer


def test_chats_put_the_fact_in_a_later_user_turn():
    [fact] = VariedSampler("train", seed=9).facts("chat")
    turns = fact.text.split("\n")
    assert [t.split(":")[0] for t in turns] == ["User", "Assistant", "User"]
    assert fact.answer in turns[-1]


def test_evaluation_phrasings_and_values_are_never_drawn_for_training():
    train = [f for s in range(200) for f in VariedSampler("train", s).facts()]
    held_out = [f for s in range(200) for f in VariedSampler("eval", s).facts()]
    assert not {f.question for f in held_out if f.relation != "pair"} & {f.question for f in train}
    # Drawn values split by hash (names in pairs split as the template corpus does; a JSON field
    # of a few values, such as a currency, may have none in a split and then takes any).
    drawn = lambda facts: [f for f in facts if f.relation != "pair" and not f.relation.startswith("json")]
    assert all(not _held_out(f.answer) for f in drawn(train))
    assert all(_held_out(f.answer) for f in drawn(held_out))


def test_exact_strings_are_drawn_not_listed():
    import random

    rng = random.Random(0)
    assert len({version(rng) for _ in range(200)}) > 150
    assert len({unusual_name(rng) for _ in range(200)}) > 150


def test_a_question_close_to_a_fact_asks_what_it_does_not_tell():
    sampler = VariedSampler("train", seed=5)
    asked = 0
    for _ in range(30):
        [output] = sampler.facts("json")
        question = sampler.unwritten_question(output, set())
        ident = output.subject.split(":", 1)[1]
        if question is not None:  # None where the output reported every field
            asked += 1
            assert ident in question and output.question != question
            [field] = [f for f in TOOLS[output.relation.removeprefix("json:")][1] if f.replace("_", " ") in question]
            assert f'"{field}"' not in output.text
        [exact] = sampler.facts("exact")
        subject = exact.subject.split(":", 1)[1]
        question = sampler.unwritten_question(exact, {subject})
        if question is not None:  # None where every subject of its kind is taken
            asked += 1
            assert subject not in question and question != exact.question
    assert asked > 30
    [chat] = sampler.facts("chat")
    assert sampler.unwritten_question(chat, set()) is None
