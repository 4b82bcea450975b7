"""The seam the adapters share: one memory on a server or in an engine, and clear errors."""

import pytest
from pydantic import ValidationError

from langchain_memagent import ChatMemAgent, MemAgentCallbackHandler, MemAgentLLM
from llama_index.memory.memagent import MemAgentMemory
from memagent.client import ClientError
from memagent.integration.backend import EngineBackend, connect
from tests.integrations.conftest import new_memory_id


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
