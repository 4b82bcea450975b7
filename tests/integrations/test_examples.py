"""The two examples run end to end: an agent's tool output lands in memory, then a question with
nothing else in the prompt is answered from it. On the embedded default model when its adapter is
present, else on random weights (plumbing only)."""

import subprocess
import sys
from pathlib import Path

import pytest

from memagent.default_model import ADAPTER_DIR, ADAPTER_WEIGHTS

EXAMPLES = Path(__file__).parents[2] / "examples"
ON_DEFAULT = (ADAPTER_DIR / ADAPTER_WEIGHTS).exists()


@pytest.mark.parametrize("example", ["langchain_agent.py", "llamaindex_agent.py"])
def test_example_runs_end_to_end(example):
    model = [] if ON_DEFAULT else ["--model", "random:tiny"]
    run = subprocess.run([sys.executable, EXAMPLES / example, *model], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == 'agent called get_weather: {"city": "Oslo", "temp_c": 12, "sky": "light rain"}'
    assert lines[2] == "Q: What temperature did the weather tool report for Oslo?"
    assert lines[3].startswith("A (from memory, no tools):")
    if ON_DEFAULT:
        assert "12" in lines[3]
