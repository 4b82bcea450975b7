"""The TypeScript client (clients/typescript) against a real local server: write, stream with
usage, ask, read the log. Skipped where Node or the built package is missing; build it with
`cd clients/typescript && npm ci && npm run build`."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integrations.conftest import new_memory_id

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (PACKAGE / "dist" / "demo.js").exists(),
    reason="needs node and a built clients/typescript (npm ci && npm run build)",
)


def test_typescript_client_writes_streams_asks_and_reads_the_log(server_address, server_client):
    memory = new_memory_id()
    env = os.environ | {"MEMAGENT_SERVER": server_address}
    env.pop("MEMAGENT_TOKEN", None)
    done = subprocess.run([NODE, "dist/demo.js", memory], cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    keys = ("receipt", "text", "answer", "entries", "memory")
    receipt, generation, answer, entries, info = (line[key] for line, key in zip(lines, keys))
    [entry] = server_client.entries(memory)
    assert receipt["entry_id"] == entry.entry_id and receipt["step"] == server_client.get(memory).step
    usage = lines[1]["usage"]
    assert 0 < usage["generated_tokens"] <= 8 and usage["finish_reason"] in ("stop", "length") and usage["step"] == receipt["step"]
    assert generation == "".join(server_client.generate(memory, "Kim's bike is", max_new_tokens=8))
    asked = server_client.ask_with_usage(memory, "What colour is Kim's bike?")
    assert (answer, lines[2]["abstained"]) == (asked.text, asked.abstained)
    assert entries == [["Kim's bike is blue.", "typescript", {"run_id": "demo"}]]
    expected = server_client.get(memory)
    assert info == {"step": expected.step, "long_term_tokens": expected.long_term_tokens}
