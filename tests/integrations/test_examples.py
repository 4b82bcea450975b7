"""The two examples run end to end: one agent object serves two users; each user's tool output
lands in that user's memory, then a question with nothing else in the prompt is answered from it.
On the embedded default model when its adapter is present, else on random weights (plumbing only)."""

import subprocess
import sys
from pathlib import Path

import pytest

from memagent.default_model import ADAPTER_DIR, ADAPTER_WEIGHTS

EXAMPLES = Path(__file__).parents[2] / "examples"
ON_DEFAULT = (ADAPTER_DIR / ADAPTER_WEIGHTS).exists()


@pytest.mark.parametrize("example", ["langchain_agent.py", "llamaindex_agent.py"])
def test_example_serves_two_users_from_one_agent(example):
    model = [] if ON_DEFAULT else ["--model", "random:tiny"]
    run = subprocess.run([sys.executable, EXAMPLES / example, *model], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == 'alice: agent called get_weather: {"city": "Oslo", "temp_c": 12, "sky": "light rain"}'
    assert lines[1] == 'bob: agent called get_weather: {"city": "Lisbon", "temp_c": 24, "sky": "sunny"}'
    assert lines[2].startswith("writes per memory: alice ") and ", bob " in lines[2]
    assert lines[3] == "alice Q: What temperature did the weather tool report for Oslo?"
    assert lines[4].startswith("alice A (from memory 'alice', no tools):")
    assert lines[5] == "bob Q: What temperature did the weather tool report for Lisbon?"
    assert lines[6].startswith("bob A (from memory 'bob', no tools):")
    if ON_DEFAULT:
        assert "12" in lines[4] and "24" in lines[6]
