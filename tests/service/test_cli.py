"""The client subcommands against a real server."""

from __future__ import annotations

import io

import pytest

from memagent.cli import main

from .conftest import ALICE

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
    assert isinstance(_run(server, capsys, "ask", "cli-notes", "What", "colour", "is", "the", "boat?"), str)
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
