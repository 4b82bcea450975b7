"""The generated corpus: answers only in the facts, held-out phrasings, short tool lines."""

import pytest

from memagent import default_model
from memagent.train.corpus import RELATIONS, FactSampler, general_paragraphs
from tests.templates import pattern


@pytest.fixture(scope="module")
def tokenizer():
    return default_model.load_tokenizer()


@pytest.mark.parametrize("split", ["train", "eval"])
def test_no_answer_leaks_into_the_question(split):
    sampler = FactSampler(split, seed=3)
    for relation in RELATIONS:
        for _ in range(20):
            fact = sampler.fact(relation)
            assert fact.answer in fact.text
            assert fact.answer.lower() not in fact.question.lower(), fact


def test_evaluation_uses_phrasings_and_names_training_never_sees():
    for spec in RELATIONS.values():
        for kind in ("facts", "questions"):
            assert spec[kind][-1] not in spec[kind][:-1]
    train = [FactSampler("train", seed=s).fact() for s in range(400)]
    held_out = [FactSampler("eval", seed=s).fact() for s in range(400)]
    assert not {f.question for f in held_out} & {f.question for f in train}
    assert not {f.text for f in held_out} & {f.text for f in train}
    assert not set(FactSampler("eval").first_names) & set(FactSampler("train").first_names)


@pytest.mark.parametrize("relation", sorted(RELATIONS))
def test_no_training_phrasing_makes_the_held_out_one(relation):
    """Training says each relation many ways, but never the way evaluation does, even with
    its slots filled in otherwise."""
    for kind in ("facts", "questions"):
        *train, held_out = RELATIONS[relation][kind]
        assert not [t for t in train if pattern(t).fullmatch(held_out)], (relation, kind)


def test_questions_are_phrased_differently_from_facts():
    sampler = FactSampler("train", seed=5)
    for _ in range(100):
        fact = sampler.fact()
        assert fact.question.rstrip("?") not in fact.text


def test_distinct_facts_have_one_right_answer_each():
    facts = FactSampler("train", seed=1).distinct(6)
    assert len({f.subject for f in facts}) == 6
    assert len({f.answer for f in facts}) == 6


def test_distinct_facts_never_share_a_question():
    """Two Sofias with different phones are different subjects but one question."""
    facts = FactSampler("eval", seed=1).distinct(80)
    assert len({f.question for f in facts}) == 80


def test_tool_outputs_include_writes_under_16_tokens(tokenizer):
    sampler = FactSampler("train", seed=2)
    lengths = [len(tokenizer(sampler.fact(tool=True).text)["input_ids"]) for _ in range(100)]
    assert min(lengths) < 16


def test_general_text_splits_are_disjoint_prose():
    train, held_out = general_paragraphs("train"), general_paragraphs("eval")
    assert len(train) > 100 and len(held_out) > 20
    assert not set(train) & set(held_out)
