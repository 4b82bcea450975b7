"""The published plots are drawn from the stored results: intervals are right, the stored table
reads back exactly, and redrawing needs no measurement."""

import importlib.util
from pathlib import Path

import pytest

from memagent.evaluation.report import replot, wilson_interval

ROOT = Path(__file__).resolve().parents[2]


def _history_bench():
    spec = importlib.util.spec_from_file_location("history_bench", ROOT / "bench" / "history_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wilson_interval_matches_the_textbook_values():
    assert wilson_interval(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    low, high = wilson_interval(0.0, 100)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.0370, abs=1e-4)


def test_the_history_table_reads_back_as_written_and_replots(tmp_path):
    bench = _history_bench()
    measured = {"ttft_s": 0.125, "decode_tok_s": 50.5, "memory_mib": 1.5}
    rows = [
        {"h": 1, "system": bench.SYSTEMS[0], "prompt_tokens": 9, **measured, "write_s": 0.0625, "long_term_tokens": 64},
        {"h": 1000, "system": bench.SYSTEMS[2], "prompt_tokens": 9000, "ttft_s": None, "decode_tok_s": None,
         "memory_mib": None, "write_s": None, "long_term_tokens": None},
    ]
    text = bench.table(rows, "CPU")
    assert bench.EXCEEDS in text
    assert bench.rows_from_table(text) == rows
    bench.plot(rows, tmp_path / "history_cost.png")
    assert (tmp_path / "history_cost.png").read_bytes().startswith(b"\x89PNG")


def test_replot_draws_the_retention_plot_from_the_json_alone(tmp_path):
    (tmp_path / "eval_results.json").write_text((ROOT / "docs" / "eval_results.json").read_text())
    path = replot(tmp_path)
    assert path == tmp_path / "eval_retention.png" and path.read_bytes().startswith(b"\x89PNG")
