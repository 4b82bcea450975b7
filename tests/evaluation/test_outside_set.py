"""The outside evaluation set: hand-written, in forms the training corpus does not make, and
kept out of training (no template, name or value of the corpus overlaps it)."""

import pytest

from memagent.evaluation.outside import never_told_questions, outside_answers, outside_writes
from memagent.train import corpus, varied
from memagent.train.corpus import RELATIONS, FactSampler
from memagent.train.varied import CHATS, EXACT, JSON_QUESTIONS, PAIRS, VariedSampler
from tests.templates import pattern


def training_templates() -> list[str]:
    """Every fact and question template of the corpus, with its slots as "{...}"."""
    templates = [t for spec in RELATIONS.values() for t in spec["facts"] + spec["questions"]]
    templates += [t for spec in EXACT.values() for t in spec["facts"] + spec["questions"]]
    templates += JSON_QUESTIONS + [t for chat in CHATS for t in chat[:4]] + [t for pair in PAIRS for t in pair]
    return templates


def training_values() -> set[str]:
    """Every listed name and value the corpus draws from."""
    values = set()
    for module in (corpus, varied):
        for name, value in vars(module).items():
            if name.isupper() and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                values |= set(value)
    return values


def test_the_set_is_about_a_hundred_facts_each_answered_in_its_text():
    writes = outside_writes()
    facts = [f for w in writes for f in w.facts]
    assert len(facts) >= 100 and len(never_told_questions()) >= 50
    assert len({f.question for f in facts}) == len(facts)
    for fact in facts:
        assert fact.answer in fact.text and fact.answer.lower() not in fact.question.lower(), fact
    assert {w.form for w in writes} >= {"chat", "json", "version", "code", "spelling", "several"}


@pytest.mark.parametrize("template", training_templates())
def test_no_training_template_makes_an_outside_text_or_question(template):
    regex = pattern(template)
    outside = [w.text for w in outside_writes()] + [f.question for w in outside_writes() for f in w.facts]
    for text in outside + list(never_told_questions()):
        assert not regex.fullmatch(text), (template, text)


def test_no_listed_name_or_value_of_training_is_an_outside_answer():
    assert not outside_answers() & training_values()


def test_training_draws_no_outside_answer():
    answers = outside_answers()
    for seed in range(300):
        templates, forms = FactSampler("train", seed), VariedSampler("train", seed, answers)
        drawn = [templates.fact() for _ in range(3)] + [f for _ in range(3) for f in forms.facts()]
        assert not {f.answer for f in drawn} & answers


def test_an_excluded_value_is_drawn_again():
    first = VariedSampler("train", 5).facts("exact")[0]
    again = VariedSampler("train", 5, frozenset({first.answer})).facts("exact")[0]
    assert again.answer != first.answer
