"""Access: owner-only data files, no unauthenticated service off loopback unless said so,
metrics on loopback, tokens reloaded on SIGHUP, the tenant (never the token) in every RPC log
line, tokens kept off the command line."""

from __future__ import annotations

import json
import signal
import stat
import time

import grpc
import pytest
from memagent_server.process import ServerProcess
from memagent_server.server import Server, ServerConfig

from memagent.cli import main
from memagent.client import Client, ClientError
from memagent.store import MemoryStore

from .conftest import ALICE, BOB, TOKENS, RunningServer

pytestmark = pytest.mark.timeout(180)


def test_no_auth_on_a_public_address_is_refused_unless_said_insecure(tiny_engine, tmp_path, capsys):
    store = MemoryStore(tiny_engine, tmp_path)
    with pytest.raises(ValueError, match="insecure-no-auth-on-public-address"):
        Server(store, ServerConfig(host="0.0.0.0"))
    Server(store, ServerConfig(host="0.0.0.0", insecure_no_auth_on_public_address=True))
    Server(store, ServerConfig(host="::1"))  # loopback needs no word
    assert main(["serve", "--no-auth", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "cli")]) == 2
    assert "refusing --no-auth on 0.0.0.0" in capsys.readouterr().err


def test_metrics_bind_to_loopback_unless_told(tiny_engine, tmp_path):
    running = RunningServer(tiny_engine, tmp_path, host="0.0.0.0", tokens=TOKENS, metrics_port=0)
    try:
        assert running.server.metrics.http_address[0] == "127.0.0.1"
    finally:
        running.stop()


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_real_server_keeps_files_private_reloads_tokens_and_logs_tenants_not_tokens(tmp_path, capsys):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {ALICE: "alice"}}))
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log", "--snapshot-every", "1", tokens=tokens)
    try:
        with Client(server.address, ALICE) as alice, Client(server.address, BOB) as bob:
            alice.create("private")
            alice.inject("private", "Alice's secret is safe.")
            with pytest.raises(ClientError) as err:
                bob.list()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED

            tokens.write_text(json.dumps({"tokens": TOKENS}))
            server.signal(signal.SIGHUP)
            _wait_for(lambda: any(line["message"] == "tokens reloaded" for line in server.log_lines()))
            assert bob.list() == []  # bob's token counts now

            tokens.write_text("not json")  # a broken file keeps the tokens in use
            server.signal(signal.SIGHUP)
            _wait_for(lambda: any("not reloaded" in line["message"] for line in server.log_lines()))
            assert alice.get("private").entries == 1

            main(["ls", "--server", server.address, "--token-file", str(write_token(tmp_path, ALICE))])
            assert "private" in capsys.readouterr().out
    finally:
        assert server.stop() == 0
    rpcs = [line for line in server.log_lines() if line["message"] == "rpc"]
    assert {line["tenant"] for line in rpcs} >= {"alice", "bob", None}
    log_text = server.log.read_text()
    assert ALICE not in log_text and BOB not in log_text
    for path in [data, *data.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


def write_token(tmp_path, token: str):
    path = tmp_path / "token"
    path.write_text(token + "\n")
    return path


def test_the_token_comes_from_the_environment(server, capsys, monkeypatch):
    monkeypatch.setenv("MEMAGENT_TOKEN", ALICE)
    from memagent.cli import build_parser

    args = build_parser().parse_args(["ls", "--server", server.address])
    assert args.run(args) == 0  # authenticated as alice
