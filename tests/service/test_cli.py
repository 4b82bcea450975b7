"""The `memagent` command: client subcommands against a real server, start-up without torch,
help that shows defaults, and a server that logs without drawing progress bars."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from memagent_server.process import ServerProcess

from memagent.cli import build_parser, main
from memagent.client import Client

from .conftest import ALICE

README = Path(__file__).parents[2] / "README.md"

pytestmark = pytest.mark.timeout(120)


def _run(server, capsys, *argv) -> str:
    assert main([argv[0], "--server", server.address, "--token", ALICE, *argv[1:]]) == 0
    return capsys.readouterr().out


def test_inject_ask_chat_ls_rm_export_import(server, capsys, monkeypatch, tmp_path):
    assert "entry 1:" in _run(server, capsys, "inject", "cli-notes", "Ida's", "boat", "is", "green.", "--source", "cli")
    monkeypatch.setattr("sys.stdin", io.StringIO("Jon's kite is red.\n"))
    assert "entry 2:" in _run(server, capsys, "inject", "cli-notes")
    assert "cli-notes\tstep 2\t2 entries" in _run(server, capsys, "ls")
    listing = _run(server, capsys, "ls", "cli-notes")
    assert "[cli]" in listing and "Jon's kite is red." in listing
    with server.client(ALICE) as client:
        answer = client.ask("cli-notes", "What colour is the boat?")
    assert answer and _run(server, capsys, "ask", "cli-notes", "What", "colour", "is", "the", "boat?") == answer + "\n"
    assert _run(server, capsys, "chat", "cli-notes", "--message", "Hello", "--max-new-tokens", "4").endswith("\n")
    assert "exported" in _run(server, capsys, "export", "cli-notes", str(tmp_path / "notes.tar"))
    assert "imported cli-copy: step 2, 2 entries" in _run(
        server, capsys, "import", str(tmp_path / "notes.tar"), "--as", "cli-copy"
    )
    assert "forgot 1 entries" in _run(server, capsys, "rm", "cli-copy", "--entry", "1")
    assert "deleted cli-copy" in _run(server, capsys, "rm", "cli-copy")


def test_errors_are_one_line_and_exit_1(server, capsys):
    assert main(["ask", "--server", server.address, "--token", ALICE, "no-such-memory", "Hi?"]) == 1
    assert capsys.readouterr().err.strip() == "memagent ask: NOT_FOUND: memory 'no-such-memory' not found"


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=True)


WITHOUT_TORCH = """
import contextlib, io, sys
from memagent.cli import build_parser, main
for argv in (["ls"], ["ask", "m", "Why?"], ["serve"], ["train"], ["eval"], ["--help"], ["train", "--help"]):
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        build_parser().parse_args(argv)
assert main(["ls", "--server", sys.argv[1], "--token", sys.argv[2]]) == 0
print(sorted(name for name in sys.modules if name.split(".")[0] == "torch"))
"""


def test_parsing_help_and_ls_import_no_torch(server):
    listed = _python(WITHOUT_TORCH, server.address, ALICE)
    assert listed.stdout.splitlines()[-1] == "[]"


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width


def test_help_shows_defaults_but_never_the_token(capsys, monkeypatch):
    monkeypatch.setenv("MEMAGENT_TOKEN", "secret-token-from-the-environment")
    ls = _help(capsys, "ls")
    assert "(default: 127.0.0.1:50051)" in ls and "default: $MEMAGENT_TOKEN" in ls
    assert "secret-token-from-the-environment" not in ls
    assert "--max-pending MAX_PENDING requests queued or running before RESOURCE_EXHAUSTED (default: 256)" in _help(capsys, "serve")


def test_train_and_eval_describe_themselves(capsys):
    train, evaluate = _help(capsys, "train"), _help(capsys, "eval")
    assert "Train the memory adapter of the embedded default" in train and "(default: 900)" in train
    assert "{writes,tokens}" in train
    assert "Evaluate a memory adapter on held-out facts" in evaluate
    assert "comma-separated k values, e.g. 0,5,10" in evaluate and "(default: 0,1,5,10,20,50,100,200)" in evaluate
    assert build_parser().parse_args(["eval", "--distractors", "0,3"]).distractors == [0, 3]
    with pytest.raises(SystemExit):
        main(["eval", "--distractors", "0;3"])
    assert "'0;3' is not comma-separated whole numbers" in capsys.readouterr().err


def test_train_defaults_are_the_readme_run():
    """README's training commands made the shipped adapter from the base model: the first is
    `memagent train`'s defaults, the second and the third each train on from the export before,
    and the fourth trains the ranker of the third's export."""
    parser = build_parser()
    first, second, third, ranker = (
        vars(parser.parse_args(shlex.split(line)[1:]))
        for line in README.read_text().splitlines()
        if line.split()[:2] in (["memagent", "train"], ["memagent", "train-ranker"])
    )
    assert first == vars(parser.parse_args(["train"]))
    assert second["start"] == str(Path(first["run_dir"]) / "adapter")
    assert third["start"] == str(Path(second["run_dir"]) / "adapter")
    assert ranker == vars(parser.parse_args(["train-ranker", str(Path(third["run_dir"]) / "adapter")]))


def test_serve_logs_json_lines_only(tmp_path):
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log")
    try:
        with Client(server.address) as client:
            client.create("notes")
            client.inject("notes", "Ida's boat is green. " * 200)  # several chunks
    finally:
        assert server.stop() == 0
    lines = (tmp_path / "serve.log").read_text().splitlines()
    assert [line for line in lines if not line.startswith("{")] == []
    assert [json.loads(line)["message"] for line in lines][0] == "serving"


DRAW_BARS = """
from memagent.cli.serve import no_progress_bars
no_progress_bars()
from huggingface_hub.utils import tqdm as hub_tqdm
from tqdm.auto import tqdm
from transformers.utils import logging
for bar in (tqdm, hub_tqdm, logging.tqdm):
    list(bar(range(3), desc="loading"))
"""


def test_serve_turns_off_the_progress_bars_of_model_loading():
    """A first start dequantizes the default's GGUF under tqdm, a hub id downloads under
    huggingface_hub's bars, transformers loads weights under its own: none may draw in a server."""
    assert _python(DRAW_BARS).stderr == ""


@pytest.mark.parametrize("reads", [(), ("--quantize", "int8")], ids=["float32", "int8"])
def test_serve_compiles_its_decode_steps_before_it_serves_and_answers(tmp_path, reads):
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", *reads, "--compile-decode")
    try:
        messages = [line["message"] for line in server.log_lines()]
        assert messages.index("decode steps compiled") < messages.index("serving")
        with Client(server.address) as client:
            client.create("notes")
            client.inject("notes", "Ida's boat is green.")
            assert isinstance(client.ask("notes", "What colour is Ida's boat?", max_new_tokens=4), str)
            assert client.complete("notes", "Ida's boat is", max_new_tokens=12).usage.completion_tokens > 0
    finally:
        assert server.stop() == 0
