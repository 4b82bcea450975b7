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


def test_the_history_table_reads_back_as_written():
    bench = _history_bench()
    rows = bench.rows_from_table((ROOT / "docs" / "history_cost.md").read_text())
    assert len(rows) == 2 * len(bench.HISTORY_SIZES)
    assert bench.rows_from_table(bench.table(rows, "CPU")) == rows


def test_replot_draws_the_retention_plot_from_the_json_alone(tmp_path):
    (tmp_path / "eval_results.json").write_text((ROOT / "docs" / "eval_results.json").read_text())
    path = replot(tmp_path)
    assert path == tmp_path / "eval_retention.png" and path.read_bytes().startswith(b"\x89PNG")
