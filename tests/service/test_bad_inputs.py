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


HUGE = "x" * (1 << 20)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda c: c.inject("kept", "fine", source=HUGE), "max_source_bytes=1024"),
        (lambda c: c.inject("kept", "fine", metadata={HUGE: "v"}), "max_metadata_key_bytes=256"),
        (lambda c: c.inject("kept", "fine", metadata={"k": HUGE}), "max_metadata_value_bytes=4096"),
        (lambda c: c.inject("kept", "fine", request_id=HUGE), "max_request_id_bytes=128"),
        (lambda c: c.inject_many("kept", ["fine"], request_id=HUGE), "max_request_id_bytes=128"),
        (lambda c: c.complete("kept", "hi", stop=[HUGE]), "max_stop_string_bytes=256"),
        (lambda c: c.forget("kept", range(1, 10_002)), "max_entry_ids=10000"),
        (lambda c: c.get(HUGE), "invalid memory id"),
        (lambda c: c.create(HUGE), "invalid memory id"),
        (lambda c: c.fork("kept", HUGE), "invalid memory id"),
    ],
)
def test_sizes_are_limited_and_messages_quote_only_a_prefix(stored, call, words):
    code, details = _status(lambda: call(stored))
    assert code == INVALID and words in details and len(details) < 400


def test_a_long_page_token_is_refused_with_a_short_message(stored, server):
    from memagent.v1 import memagent_pb2 as pb
    from memagent.v1 import memagent_pb2_grpc

    from .conftest import ALICE

    with grpc.insecure_channel(server.address) as channel:
        stub = memagent_pb2_grpc.MemoryServiceStub(channel)
        metadata = (("authorization", f"Bearer {ALICE}"),)
        for request in (pb.ListRequest(page_token=HUGE), pb.ListEntriesRequest(memory_id="kept", page_token=HUGE)):
            method = stub.List if isinstance(request, pb.ListRequest) else stub.ListEntries
            with pytest.raises(grpc.RpcError) as err:
                method(request, metadata=metadata)
            assert err.value.code() == INVALID and "max_page_token_bytes=256" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # decodes, but not to an entry id
            stub.ListEntries(pb.ListEntriesRequest(memory_id="kept", page_token="YWJj"), metadata=metadata)
        assert err.value.code() == INVALID and "not one this server issued" in err.value.details()


def test_bytes_that_are_not_the_request_message_are_invalid_argument(stored, server):
    from .conftest import ALICE

    with grpc.insecure_channel(server.address) as channel:
        for method in ("Get", "Inject"):
            call = channel.unary_unary(f"/memagent.v1.MemoryService/{method}")  # raw bytes in and out
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xff\xff\xff not protobuf", metadata=(("authorization", f"Bearer {ALICE}"),))
            assert err.value.code() == INVALID and "not a valid" in err.value.details()
        stream = channel.stream_unary("/memagent.v1.MemoryService/InjectStream")
        with pytest.raises(grpc.RpcError) as err:
            stream(iter([b"\xff\xff\xff"]), metadata=(("authorization", f"Bearer {ALICE}"),))
        assert err.value.code() == INVALID


def test_an_unexpected_error_names_no_server_path(stored, server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError(f"cannot open {server.store.root}/alice/kept/log.wal")

    monkeypatch.setattr(server.store, "get", broken)
    code, details = _status(lambda: stored.get("kept"))
    assert code == grpc.StatusCode.INTERNAL and str(server.store.root) not in details and "logged it as" in details


@pytest.mark.parametrize("error, code", [(28, grpc.StatusCode.RESOURCE_EXHAUSTED), (5, grpc.StatusCode.UNAVAILABLE)])
def test_a_full_or_failing_disk_answers_a_clear_status_and_applies_nothing(alice, monkeypatch, error, code):
    import os

    memory = f"disk-{error}"
    alice.create(memory)
    alice.inject(memory, "Written before the disk failed.")
    before = alice.entries(memory)

    def failing_fsync(fd):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr("memagent.store.write_ahead_log.os.fsync", failing_fsync)
    got, details = _status(lambda: alice.inject(memory, "This write meets a failing disk."))
    monkeypatch.undo()
    assert got == code and "not applied" in details
    assert alice.entries(memory) == before
    assert alice.inject(memory, "After the disk recovered.").entry_id == before[-1].entry_id + 1


def test_a_retried_write_with_its_request_id_is_applied_once(alice):
    alice.create("retried")
    first = alice.inject("retried", "Written once, acknowledged twice.", request_id="r-1")
    again = alice.inject("retried", "Written once, acknowledged twice.", request_id="r-1")
    assert (again.entry_id, again.step) == (first.entry_id, first.step)
    assert len(alice.entries("retried")) == 1
    code, details = _status(lambda: alice.inject("retried", "Another text.", request_id="r-1"))
    assert code == INVALID and "r-1" in details


def _state_with(alice, tmp_path, memory: str, **change) -> "Path":
    import io
    import json
    import tarfile

    from memagent.store.write_ahead_log import decode_complete, encode

    alice.export(memory, tmp_path / "good.tar")
    with tarfile.open(tmp_path / "good.tar") as tar:
        members = {name: tar.extractfile(name).read() for name in ("header.json", "log.wal", "pool.safetensors")}
    header, entries = decode_complete(members["log.wal"])
    entries[0] = entries[0].__class__(**{**entries[0].__dict__, **change})
    members["log.wal"], members["pool.safetensors"] = encode(header, entries), b""
    members["header.json"] = json.dumps({**json.loads(members["header.json"]), "memory_id": "imported"}).encode()
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        ({"chunks": [[10**9, 2, 3]]}, "vocabulary"),
        ({"text": 7}, "invalid text"),
        ({"entry_id": -3}, "invalid entry_id"),
    ],
)
def test_import_validates_everything_before_creating_anything(stored, tmp_path, change, words):
    code, details = _status(lambda: stored.import_memory(_state_with(stored, tmp_path, "kept", **change)))
    assert code == INVALID and words in details
    assert "imported" not in [m.memory_id for m in stored.list()]
