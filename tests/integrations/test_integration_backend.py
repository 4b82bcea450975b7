"""The seam the adapters share: one memory on a server or in an engine, and clear errors."""

import asyncio

import pytest
from llama_index.core.llms import ChatMessage
from pydantic import ValidationError

from langchain_memagent import ChatMemAgent, MemAgentCallbackHandler, MemAgentLLM, MemAgentMiddleware, MemAgentStore
from llama_index.memory.memagent import MemAgentMemory, MemAgentMemoryBlock
from memagent.client import Client, ClientError
from memagent.integration.backend import EngineBackend, connect
from tests.integrations.conftest import new_memory_id
from tests.service.conftest import ALICE, TOKENS, RunningServer


@pytest.fixture(autouse=True)
def _no_server_variables(monkeypatch):
    monkeypatch.delenv("MEMAGENT_SERVER", raising=False)
    monkeypatch.delenv("MEMAGENT_TOKEN", raising=False)


def test_connect_needs_exactly_one_of_server_and_engine(tiny_engine):
    assert isinstance(connect("notes", engine=tiny_engine), EngineBackend)
    with pytest.raises(ValueError, match="either server="):
        connect("notes")
    with pytest.raises(ValueError, match="either server="):
        connect("notes", server="127.0.0.1:1", engine=tiny_engine)
    with pytest.raises(ValueError, match="must not be empty"):
        connect("", engine=tiny_engine)


def test_adapters_report_a_missing_backend_at_construction():
    with pytest.raises(ValidationError, match="either server="):
        ChatMemAgent(memory="notes")
    with pytest.raises(ValidationError, match="either server="):
        MemAgentMemory(memory="notes")
    with pytest.raises(ValueError, match="either server="):
        MemAgentCallbackHandler(memory="notes")


def test_engine_errors_surface(tiny_engine):
    with pytest.raises(ValueError, match="empty text"):
        connect("notes", engine=tiny_engine).write("   ")


def test_server_errors_surface_with_their_status(server_address):
    llm = MemAgentLLM(memory=new_memory_id(), server=server_address, max_tokens=10**6)
    with pytest.raises(ClientError, match="INVALID_ARGUMENT: max_new_tokens"):
        llm.invoke("Hello")
    with pytest.raises(ClientError, match="INVALID_ARGUMENT"):
        connect(new_memory_id(), server=server_address).write("   ")


async def test_server_errors_surface_on_the_async_path(server_address):
    chat = ChatMemAgent(memory=new_memory_id(), server=server_address, max_tokens=10**6)
    with pytest.raises(ClientError, match="INVALID_ARGUMENT: max_new_tokens"):
        await chat.ainvoke("Hello")


def test_an_unreachable_server_is_reported(unused_tcp_port):
    chat = ChatMemAgent(memory="notes", server=f"127.0.0.1:{unused_tcp_port}", timeout=5)
    with pytest.raises(ClientError, match="UNAVAILABLE"):
        chat.invoke("Hello")


def test_a_server_memory_is_created_on_first_use_and_names_its_model(server_address, server_client):
    memory = new_memory_id()
    backend = connect(memory, server=server_address)
    backend.write("The spare key is under the blue flower pot.", source="notes")
    assert [(e.text, e.source) for e in server_client.entries(memory)] == [
        ("The spare key is under the blue flower pot.", "notes")
    ]
    assert backend.model_name == server_client.get(memory).model


def test_closing_a_backend_closes_the_clients_it_opened(server_address):
    backend = connect(new_memory_id(), server=server_address)
    backend.write("Kim's bike is blue.")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(backend.awrite("Kim's car is red."))
    async_client = backend.using("other")._connection.async_clients[loop]
    backend.close()
    with pytest.raises(ValueError, match="(?i)closed"):
        backend.write("Kim's boat is green.")
    with pytest.raises(Exception, match="closed"):
        loop.run_until_complete(async_client.get(backend.memory))
    loop.close()


async def test_adapters_close_with_their_context_managers(server_address):
    memory = new_memory_id()
    with ChatMemAgent(memory=memory, server=server_address, max_tokens=4) as chat:
        chat.invoke("Hello")
    with pytest.raises(ValueError, match="(?i)closed"):
        chat.invoke("Hello")
    async with MemAgentMemory(memory=memory, server=server_address) as llama_memory:
        await llama_memory.aput(ChatMessage(role="user", content="Hello"))
        client = llama_memory.backend._connection.async_client()
    with pytest.raises(Exception, match="closed"):
        await client.get(memory)


def test_server_and_token_come_from_the_environment(monkeypatch, tiny_engine, tmp_path):
    running = RunningServer(tiny_engine, tmp_path, tokens=TOKENS, metrics_port=0)
    try:
        monkeypatch.setenv("MEMAGENT_SERVER", running.address)
        monkeypatch.setenv("MEMAGENT_TOKEN", ALICE)
        memory = new_memory_id()
        ChatMemAgent(memory=memory, max_tokens=4, remember_turns="user").invoke("Hello")
        with Client() as client:
            assert [e.text for e in client.entries(memory)] == ["User: Hello"]
        with running.client(ALICE) as alice:
            assert alice.get(memory).entries == 1
    finally:
        running.stop()


def test_an_engine_memory_keeps_a_log_in_this_process_and_forgets_from_it(tiny_engine):
    backend = connect(new_memory_id(), engine=tiny_engine)
    backend.write("Kim's bike is blue.", "notes", {"run_id": "r1"})
    backend.write("Kim's car is red.")
    first, second = backend.entries()
    assert (first.text, first.source, first.metadata) == ("Kim's bike is blue.", "notes", {"run_id": "r1"})
    backend.forget([first.entry_id])
    assert backend.entries() == [second]
    rebuilt = tiny_engine.pool(backend.memory).step
    fresh = connect(new_memory_id(), engine=tiny_engine)
    fresh.write("Kim's car is red.")
    assert rebuilt == tiny_engine.pool(fresh.memory).step


def test_an_engine_memory_written_around_its_log_refuses_to_forget(tiny_engine):
    backend = connect(new_memory_id(), engine=tiny_engine)
    backend.write("Kim's bike is blue.")
    tiny_engine.pool(backend.memory).inject("Written without the backend.", progress=False)
    step = tiny_engine.pool(backend.memory).step
    with pytest.raises(RuntimeError, match="writes made without this backend"):
        backend.forget([backend.entries()[0].entry_id])
    with pytest.raises(KeyError, match="not in the log"):
        backend.forget([99])
    assert tiny_engine.pool(backend.memory).step == step and len(backend.entries()) == 1


def test_adapters_pass_grounded_on_to_the_memory(target):
    """`grounded=True` reaches the memory, in-process and over gRPC: this model's pool keeps no
    whole writes, so the grounded ask is refused and the plain one answered."""
    refused = (ValueError, ClientError)
    question = [ChatMessage(role="user", content="Who drives a red van?")]
    memory = MemAgentMemory(**target.kwargs, recall="always", grounded=True)
    assert isinstance(memory.backend.ask("Who drives a red van?"), str)
    with pytest.raises(refused, match="whole writes"):
        memory.get("Who drives a red van?")
    with pytest.raises(refused, match="whole writes"):
        asyncio.run(MemAgentMemoryBlock(**target.kwargs, grounded=True).aget(question))
    tool = MemAgentMiddleware(**target.kwargs, grounded=True).recall_tool()
    with pytest.raises(refused, match="whole writes"):
        tool.invoke({"question": "Who drives a red van?"})
    kwargs = {k: v for k, v in target.kwargs.items() if k != "memory"}
    with MemAgentStore(**kwargs, grounded=True) as store, pytest.raises(refused, match="whole writes"):
        store.search((target.kwargs["memory"],), query="Who drives a red van?")
