"""Every RPC, through the Python clients, against a real server on loopback."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from safetensors.torch import load as load_tensors

from memagent.abstention import ABSTENTION
from memagent.client import Answer, AsyncClient, ClientError, Completion, Text
from memagent.sampling import ASK_DEFAULTS, SamplingParams, Usage
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc

from tests.abstaining import abstaining_engine

from .conftest import ALICE, TOKENS, RunningServer

pytestmark = pytest.mark.timeout(120)


def test_create_get_list_delete(alice):
    created = alice.create("notes")
    assert (created.memory_id, created.step, created.entries, created.model) == ("notes", 0, 0, "random:tiny")
    assert created.pool_bytes > 0 and created.disk_bytes > 0
    assert created.long_term_tokens == 0, "a model without long-term memory"
    assert alice.get("notes").created == created.created
    assert "notes" in [m.memory_id for m in alice.list()]
    alice.delete("notes")
    with pytest.raises(ClientError) as err:
        alice.get("notes")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ClientError) as err:
        alice.create("dup") and alice.create("dup")
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_list_pages(server):
    channel = grpc.insecure_channel(server.address)
    stub = memagent_pb2_grpc.MemoryServiceStub(channel)
    metadata = (("authorization", f"Bearer {ALICE}"),)
    for i in range(5):
        stub.Create(pb.CreateRequest(memory_id=f"paged-{i}"), metadata=metadata)
    seen, token = [], ""
    while True:
        page = stub.List(pb.ListRequest(page_size=2, page_token=token), metadata=metadata)
        assert len(page.memories) <= 2
        seen += [m.memory_id for m in page.memories]
        if not (token := page.next_page_token):
            break
    assert [s for s in seen if s.startswith("paged-")] == [f"paged-{i}" for i in range(5)]
    channel.close()


def _in_process(engine, name, texts):
    """A pool on the server's engine told the same texts: it answers as the server must."""
    pool = engine.pool(name)
    pool.reset()
    for text in texts:
        pool.inject(text, progress=False)
    return pool


def test_inject_entries_and_reads(alice, tiny_engine):
    alice.create("facts")
    receipt = alice.inject("facts", "Alice's cat is called Miso.", source="chat", metadata={"turn": "3"})
    assert (receipt.entry_id, receipt.step) == (1, 1) and receipt.tokens > 0 and receipt.chunks == 1
    bulk = alice.inject_many("facts", ["Bob lives in Lyon.", Text("Carol plays the cello.", source="doc")])
    assert [r.entry_id for r in bulk] == [2, 3] and bulk[-1].step == 3
    entries = alice.entries("facts")
    assert [(e.entry_id, e.source) for e in entries] == [(1, "chat"), (2, ""), (3, "doc")]
    assert entries[0].metadata == {"turn": "3"} and entries[0].text == "Alice's cat is called Miso."
    info = alice.get("facts")
    assert (info.step, info.entries, info.tokens_written) == (3, 3, sum(e.tokens for e in entries))

    pieces = list(alice.generate("facts", "The cat is called", max_new_tokens=8))
    assert "".join(pieces) == alice.complete("facts", "The cat is called", max_new_tokens=8).text
    local = _in_process(tiny_engine, "rpc-facts", [e.text for e in entries])
    assert alice.ask("facts", "What is the cat called?") == local.ask("What is the cat called?")
    messages = [{"role": "user", "content": "Who plays the cello?"}]
    reply = "".join(alice.chat("facts", messages, max_new_tokens=6))
    assert reply and reply == local.chat(messages, max_new_tokens=6)
    # Ask is a one-turn chat cut at the first newline (seeded sampling: greedy replies of the
    # random model are blank lines).
    question = [{"role": "user", "content": "What is the cat called?"}]
    answer = "".join(alice.chat("facts", question, max_new_tokens=32, stop=["\n"], do_sample=True, seed=7)).strip()
    assert answer and alice.ask("facts", "What is the cat called?", do_sample=True, seed=7) == answer
    sampled = [alice.complete("facts", "Hi", do_sample=True, seed=7, top_k=50, top_p=0.9).text for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_usage_is_reported(server):
    channel = grpc.insecure_channel(server.address)
    stub = memagent_pb2_grpc.MemoryServiceStub(channel)
    metadata = (("authorization", f"Bearer {ALICE}"),)
    stub.Create(pb.CreateRequest(memory_id="usage"), metadata=metadata)
    request = pb.GenerateRequest(memory_id="usage", prompt="one two", options=pb.SamplingOptions(max_new_tokens=5))
    responses = list(stub.Generate(request, metadata=metadata))
    usage = responses[-1].usage
    assert responses[-1].HasField("usage") and all(r.HasField("text") for r in responses[:-1])
    assert usage.prompt_tokens == 2 and 1 <= usage.generated_tokens <= 5 and usage.finish_reason in ("stop", "length")
    channel.close()


def test_the_clients_keep_the_usage(alice):
    alice.create("usage-kept")
    alice.inject("usage-kept", "Alice's cat is called Miso.")
    prompt_tokens = alice.complete("usage-kept", "The cat", max_new_tokens=1).usage.prompt_tokens
    stream = alice.generate("usage-kept", "The cat", SamplingParams(max_new_tokens=5))
    assert stream.usage is None
    text = "".join(stream)
    assert stream.usage == Usage(prompt_tokens, 5, "length", 1)
    assert alice.complete("usage-kept", "The cat", max_new_tokens=5) == Completion(text, stream.usage)

    reply = alice.chat("usage-kept", [{"role": "user", "content": "Hi"}], max_new_tokens=3)
    assert reply.usage is None and list(reply) and reply.usage.completion_tokens <= 3

    answer = alice.ask_with_usage("usage-kept", "What is the cat called?")
    assert answer.text == alice.ask("usage-kept", "What is the cat called?") and "\n" not in answer.text
    assert answer.abstained is False
    assert answer.usage.completion_tokens <= ASK_DEFAULTS.max_new_tokens and answer.usage.step == 1
    long = alice.ask_with_usage("usage-kept", "What is the cat called?", max_new_tokens=2, stop=["never seen"])
    assert long.usage.completion_tokens <= 2


async def test_the_async_client_keeps_the_usage(server):
    async with AsyncClient(server.address, ALICE) as client:
        await client.create("usage-async")
        await client.inject("usage-async", "Frank keeps bees.")
        stream = client.generate("usage-async", "Frank keeps", max_new_tokens=4)
        assert stream.usage is None
        text = "".join([p async for p in stream])
        assert (stream.usage.completion_tokens, stream.usage.finish_reason, stream.usage.step) == (4, "length", 1)
        assert await client.complete("usage-async", "Frank keeps", max_new_tokens=4) == Completion(text, stream.usage)
        chat = client.chat("usage-async", [{"role": "user", "content": "Hi"}], SamplingParams(max_new_tokens=2))
        assert [p async for p in chat] and chat.usage.completion_tokens <= 2
        answer = await client.ask_with_usage("usage-async", "Who keeps bees?")
        assert answer.text == await client.ask("usage-async", "Who keeps bees?")
        assert answer.usage.completion_tokens <= ASK_DEFAULTS.max_new_tokens


@pytest.fixture(scope="module")
def abstaining_server(tmp_path_factory):
    running = RunningServer(abstaining_engine(), tmp_path_factory.mktemp("abstaining"), tokens=TOKENS, metrics_port=0)
    yield running
    running.stop()


async def test_ask_says_when_it_abstained(abstaining_server):
    with abstaining_server.client(ALICE) as client:
        client.create("never-told")
        client.inject("never-told", "Raul drives a blue bus.")
        answer = client.ask_with_usage("never-told", "Who drives a red van?")
        assert (answer.text, answer.abstained) == (ABSTENTION, True)
        assert client.ask("never-told", "Who drives a red van?") == ABSTENTION
    async with AsyncClient(abstaining_server.address, ALICE) as client:
        answer = await client.ask_with_usage("never-told", "Who drives a red van?")
        assert answer == Answer(ABSTENTION, answer.usage, abstained=True) and answer.usage.completion_tokens > 0


def test_bad_options_are_refused_before_sending(alice):
    with pytest.raises(TypeError, match="unknown sampling options"):
        alice.complete("facts", "hi", max_tokens=3)
    with pytest.raises(ValueError, match="top_p"):
        alice.generate("facts", "hi", top_p=0.0)


def _pool(client, memory_id, path):
    client.export(memory_id, path)
    import tarfile

    with tarfile.open(path) as tar:
        return load_tensors(tar.extractfile("pool.safetensors").read())["memory"]


def test_fork_export_import_reset(alice, tmp_path):
    alice.create("origin")
    alice.inject_many("origin", ["First fact about origin.", "Second fact about origin."])
    fork = alice.fork("origin", "copy")
    assert (fork.step, fork.entries) == (2, 2)
    alice.inject("copy", "Only the copy knows this.")
    assert alice.get("origin").entries == 2 and alice.get("copy").entries == 3

    original = _pool(alice, "origin", tmp_path / "origin.tar")
    restored = alice.import_memory(tmp_path / "origin.tar", "restored")
    assert (restored.step, restored.entries) == (2, 2)
    assert [e.text for e in alice.entries("restored")] == [e.text for e in alice.entries("origin")]
    assert (_pool(alice, "restored", tmp_path / "restored.tar") == original).all()
    # The restored memory goes on where the original was.
    assert alice.inject("restored", "Third.").entry_id == 3

    reset = alice.reset("copy")
    assert (reset.step, reset.entries) == (0, 0) and alice.entries("copy") == []
    assert alice.inject("copy", "After the reset.").entry_id == 4  # ids never repeat


def test_forget_rebuilds_as_if_never_told(alice, tmp_path):
    facts = ["Dana's locker code is 4411.", "The secret password is swordfish.", "Eve works at the bakery."]
    alice.create("forgetful")
    receipts = [alice.inject("forgetful", f) for f in facts]
    result = alice.forget("forgetful", [receipts[1].entry_id])
    assert result.forgotten == 1 and result.memory.entries == 2
    assert [e.text for e in alice.entries("forgetful")] == [facts[0], facts[2]]
    alice.create("never-told")
    alice.inject_many("never-told", [facts[0], facts[2]])
    assert (_pool(alice, "forgetful", tmp_path / "a.tar") == _pool(alice, "never-told", tmp_path / "b.tar")).all()
    question = "What is the secret password?"
    assert alice.ask("forgetful", question) == alice.ask("never-told", question)
    with pytest.raises(ClientError) as err:
        alice.forget("forgetful", [receipts[1].entry_id])
    assert err.value.code == grpc.StatusCode.NOT_FOUND


async def test_async_client(server, tiny_engine):
    async with AsyncClient(server.address, ALICE) as client:
        await client.create("async")
        receipt = await client.inject("async", "Frank keeps bees.", source="s")
        assert receipt.entry_id == 1
        assert [r.entry_id for r in await client.inject_many("async", ["Gina sails.", "Hal paints."])] == [2, 3]
        assert [e.entry_id for e in await client.entries("async")] == [1, 2, 3]
        pieces = [p async for p in client.generate("async", "Frank keeps", max_new_tokens=6)]
        assert "".join(pieces) == (await client.complete("async", "Frank keeps", max_new_tokens=6)).text
        local = _in_process(tiny_engine, "rpc-async", ["Frank keeps bees.", "Gina sails.", "Hal paints."])
        messages = [{"role": "user", "content": "Hi"}]
        chat = [p async for p in client.chat("async", messages, max_new_tokens=4)]
        assert chat and "".join(chat) == local.chat(messages, max_new_tokens=4)
        assert await client.ask("async", "Who keeps bees?") == local.ask("Who keeps bees?")
        assert (await client.get("async")).step == 3
        assert "async" in [m.memory_id for m in await client.list()]
        assert (await client.fork("async", "async-copy")).entries == 3
        assert (await client.forget("async-copy", [2])).memory.entries == 2
        assert (await client.reset("async-copy")).step == 0
        await client.delete("async-copy")


def test_health_reflection_and_metrics(server, alice):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = grpc.insecure_channel(server.address)
    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="memagent.v1.MemoryService")
    )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "memagent.v1.MemoryService" in services and "grpc.health.v1.Health" in services
    channel.close()

    alice.create("metered")
    alice.inject("metered", "Counting tokens here.")
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
    assert 'memagent_requests_total{code="OK",method="Inject"}' in body
    assert "memagent_tokens_written_total" in body and 'memagent_memories_resident{tier="device"}' in body
