"""`memagent token` prints or adds a token in the server's tokens file; a caller without one is
told where to get it."""

import json

import pytest
from memagent_server.auth import load_tokens

from memagent.cli import main
from memagent.client import ClientError
from tests.service.conftest import RunningServer


def token(capsys, *args: str) -> str:
    assert main(["token", *args]) == 0
    return capsys.readouterr().out.strip()


def test_prints_the_token_creating_the_file_on_first_use(tmp_path, capsys):
    first = token(capsys, "--data-dir", str(tmp_path))
    assert load_tokens(tmp_path / "tokens.json") == {first: "default"}
    assert token(capsys, "--data-dir", str(tmp_path)) == first
    assert (tmp_path / "tokens.json").stat().st_mode & 0o777 == 0o600


def test_adds_tokens_for_other_tenants_and_on_request(tmp_path, capsys):
    path = tmp_path / "tokens.json"
    default = token(capsys, "--tokens", str(path))
    bob = token(capsys, "--tokens", str(path), "--tenant", "bob")
    assert token(capsys, "--tokens", str(path), "--tenant", "bob") == bob
    again = token(capsys, "--tokens", str(path), "--tenant", "bob", "--new")
    assert load_tokens(path) == {default: "default", bob: "bob", again: "bob"}
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_bad_tenant_or_file_changes_nothing(tmp_path, capsys):
    path = tmp_path / "tokens.json"
    token(capsys, "--tokens", str(path))
    before = path.read_text()
    assert main(["token", "--tokens", str(path), "--tenant", "../bob"]) == 2
    assert "invalid tenant" in capsys.readouterr().err and path.read_text() == before
    path.write_text(json.dumps({"tokens": []}))
    assert main(["token", "--tokens", str(path)]) == 2


def test_the_printed_token_is_served_and_a_missing_one_is_explained(tiny_engine, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEMAGENT_TOKEN", raising=False)  # a client without a token reads it
    printed = token(capsys, "--data-dir", str(tmp_path))
    running = RunningServer(tiny_engine, tmp_path / "data", tokens=load_tokens(tmp_path / "tokens.json"), metrics_port=0)
    try:
        with running.client(printed) as client:
            client.create("notes")
        with running.client(None) as client, pytest.raises(ClientError) as refused:
            client.list()
        assert refused.value.code.name == "UNAUTHENTICATED"
        assert "memagent token" in refused.value.details and "MEMAGENT_TOKEN" in refused.value.details
    finally:
        running.stop()
