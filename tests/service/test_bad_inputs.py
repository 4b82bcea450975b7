"""Bad requests get the right status and a message naming the problem, and change nothing."""

from __future__ import annotations

import grpc
import pytest

from memagent.client import ClientError
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc

from .conftest import ALICE

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stored(alice):
    if "kept" not in [m.memory_id for m in alice.list()]:
        alice.create("kept")
        alice.inject("kept", "A fact that must survive every bad request.")
    before = (alice.get("kept"), alice.entries("kept"))
    yield alice
    after = (alice.get("kept"), alice.entries("kept"))
    assert after == before


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ClientError) as err:
        call()
    return err.value.code, err.value.details


INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "call, code, words",
    [
        (lambda c: c.inject("kept", ""), INVALID, "empty"),
        (lambda c: c.inject("kept", "   \n"), INVALID, "empty"),
        (lambda c: c.inject("kept", "x" * 5000), INVALID, "max_text_bytes=4096"),
        (lambda c: c.inject_many("kept", ["", "fine text"]), INVALID, "message 0"),
        (lambda c: c.inject_many("kept", []), INVALID, "no texts"),
        (lambda c: c.inject("missing", "text"), grpc.StatusCode.NOT_FOUND, "missing"),
        (lambda c: c.complete("kept", "hi", max_new_tokens=513), INVALID, "from 1 to 512"),
        (lambda c: c.complete("kept", ""), INVALID, "prompt is empty"),
        (lambda c: c.ask("kept", " "), INVALID, "question is empty"),
        (lambda c: list(c.chat("kept", [{"role": "robot", "content": "hi"}])), INVALID, "role"),
        (lambda c: list(c.chat("kept", [])), INVALID, "no messages"),
        (lambda c: c.forget("kept", [999]), grpc.StatusCode.NOT_FOUND, "999"),
        (lambda c: c.forget("kept", []), INVALID, "no entry ids"),
        (lambda c: c.create("kept"), grpc.StatusCode.ALREADY_EXISTS, "kept"),
        (lambda c: c.fork("kept", "kept"), grpc.StatusCode.ALREADY_EXISTS, "kept"),
        (lambda c: c.get("missing"), grpc.StatusCode.NOT_FOUND, "missing"),
    ],
)
def test_bad_requests(stored, call, code, words):
    got, details = _status(lambda: call(stored))
    assert got == code and words in details


@pytest.mark.parametrize(
    "options, words",
    [
        (pb.SamplingOptions(max_new_tokens=0), "max_new_tokens"),
        (pb.SamplingOptions(top_p=0.0), "top_p"),
        (pb.SamplingOptions(do_sample=True, temperature=0.0), "temperature"),
        (pb.SamplingOptions(stop=["x"] * 17), "max_stop_strings=16"),
    ],
)
def test_bad_sampling_options_from_any_client(stored, server, options, words):
    """The Python clients refuse these before sending; the server still checks what others send."""
    with grpc.insecure_channel(server.address) as channel:
        stub = memagent_pb2_grpc.MemoryServiceStub(channel)
        request = pb.GenerateRequest(memory_id="kept", prompt="hi", options=options)
        with pytest.raises(grpc.RpcError) as err:
            stub.Complete(request, metadata=(("authorization", f"Bearer {ALICE}"),))
    assert err.value.code() == INVALID and words in err.value.details()


def test_a_bad_text_in_a_stream_stops_it_after_the_durable_ones(alice):
    alice.create("bulk")
    code, details = _status(lambda: alice.inject_many("bulk", [f"text {i}" for i in range(3)] + ["", "never"]))
    assert code == INVALID and "message 3 is empty (the 3 texts before it were written)" in details
    assert [e.text for e in alice.entries("bulk")] == ["text 0", "text 1", "text 2"]


@pytest.mark.parametrize("memory_id", ["", "../escape", "a/b", ".hidden", "..", "x" * 129, "sp ace", "nul\x00l", "é"])
def test_bad_memory_ids(stored, memory_id, server):
    for call in (
        lambda: stored.create(memory_id),
        lambda: stored.inject(memory_id, "text"),
        lambda: stored.get(memory_id),
    ):
        code, details = _status(call)
        assert code == INVALID and "invalid memory id" in details
    assert not any(p.name.startswith(".") or p.name == "escape" for p in server.store.root.rglob("*") if p.is_dir())


def test_too_many_texts_and_pages(stored, server):
    from memagent.v1 import memagent_pb2 as pb
    from memagent.v1 import memagent_pb2_grpc

    from .conftest import ALICE

    metadata = (("authorization", f"Bearer {ALICE}"),)
    with grpc.insecure_channel(server.address) as channel:
        stub = memagent_pb2_grpc.MemoryServiceStub(channel)
        calls = {
            "max_texts_per_request=8": lambda: stub.Inject(
                pb.InjectRequest(memory_id="kept", texts=[pb.Text(text="t")] * 9), metadata=metadata
            ),
            "no texts": lambda: stub.Inject(pb.InjectRequest(memory_id="kept"), metadata=metadata),
            "max_page_size=1000": lambda: stub.List(pb.ListRequest(page_size=1001), metadata=metadata),
            "page_token": lambda: stub.List(pb.ListRequest(page_token="%%%"), metadata=metadata),
            "header": lambda: stub.Import(iter([pb.StateChunk(log=b"xx")]), metadata=metadata),
            "imported log": lambda: stub.Import(
                iter(
                    [
                        pb.StateChunk(header=pb.StateHeader(memory_id="bad", format="memagent.state/1")),
                        pb.StateChunk(log=b"not a log"),
                    ]
                ),
                metadata=metadata,
            ),
        }
        for words, call in calls.items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == INVALID and words in err.value.details(), words
    assert "bad" not in [m.memory_id for m in stored.list()]
