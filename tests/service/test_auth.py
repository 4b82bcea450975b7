"""Bearer tokens name tenants; a tenant sees only its own memories."""

from __future__ import annotations

import grpc
import pytest

from memagent.client import ClientError

from .conftest import RunningServer

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("token", [None, "not-a-known-token-at-all"])
def test_missing_or_unknown_token_is_unauthenticated(server, token):
    with server.client(token) as client, pytest.raises(ClientError) as err:
        client.list()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in err.value.details


def test_wrong_scheme_is_unauthenticated(server):
    from memagent.v1 import memagent_pb2 as pb
    from memagent.v1 import memagent_pb2_grpc

    from .conftest import ALICE

    with grpc.insecure_channel(server.address) as channel:
        stub = memagent_pb2_grpc.MemoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.List(pb.ListRequest(), metadata=(("authorization", f"Basic {ALICE}"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tenants_are_isolated(alice, bob):
    alice.create("diary")
    alice.inject("diary", "Alice's diary: the key is under the mat.")
    for call in (
        lambda: bob.get("diary"),
        lambda: bob.inject("diary", "Bob writes into Alice's diary."),
        lambda: bob.ask("diary", "Where is the key?"),
        lambda: list(bob.generate("diary", "The key")),
        lambda: bob.entries("diary"),
        lambda: bob.forget("diary", [1]),
        lambda: bob.fork("diary", "stolen"),
        lambda: bob.delete("diary"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "diary" not in [m.memory_id for m in bob.list()]
    # Bob's own "diary" is another memory.
    bob.create("diary")
    assert bob.get("diary").entries == 0
    assert alice.get("diary").entries == 1
    assert [e.text for e in alice.entries("diary")] == ["Alice's diary: the key is under the mat."]


def test_no_auth_serves_everyone_as_one_tenant(tiny_engine, tmp_path):
    running = RunningServer(tiny_engine, tmp_path)
    try:
        with running.client(None) as anonymous, running.client("whatever-token-is-ignored") as other:
            anonymous.create("shared")
            assert other.get("shared").memory_id == "shared"
    finally:
        running.stop()
    assert (tmp_path / "default" / "shared" / "log.wal").exists()


def test_tokens_files(tmp_path):
    from memagent_server.auth import create_tokens, load_tokens

    path = tmp_path / "tokens.json"
    created = create_tokens(path)
    assert load_tokens(path) == created and list(created.values()) == ["default"]
    assert path.stat().st_mode & 0o777 == 0o600
    for bad in ('{"tokens": {}}', '{"tokens": {"short": "t"}}', '{"tokens": {"long-enough-token-0123": "../t"}}', "[]"):
        path.write_text(bad)
        with pytest.raises(ValueError):
            load_tokens(path)
