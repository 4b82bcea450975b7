"""The adapters pass an abstention on: recall that does not know adds nothing to the chat, and a
store search says that it abstained."""

import pytest
from llama_index.core.llms import ChatMessage

from langchain_memagent import MemAgentStore
from llama_index.memory.memagent import MemAgentMemory, MemAgentMemoryBlock
from memagent.abstention import ABSTENTION
from tests.abstaining import abstaining_engine
from tests.integrations.conftest import new_memory_id


@pytest.fixture(scope="module")
def engine():
    return abstaining_engine()


def test_llamaindex_memory_recalls_nothing_when_the_memory_does_not_know(engine):
    memory = MemAgentMemory(memory=new_memory_id(), engine=engine)
    memory.put(ChatMessage(role="user", content="Raul drives a blue bus."))
    assert memory.backend.ask("Who drives a red van?") == ABSTENTION
    assert [m.role for m in memory.get("Who drives a red van?")] == ["user"]


async def test_llamaindex_memory_recalls_nothing_async(engine):
    memory = MemAgentMemory(memory=new_memory_id(), engine=engine)
    assert await memory.aget("Who drives a red van?") == []


async def test_llamaindex_memory_block_recalls_nothing(engine):
    block = MemAgentMemoryBlock(memory=new_memory_id(), engine=engine)
    assert await block.aget([ChatMessage(role="user", content="Who drives a red van?")]) == ""


def test_langchain_store_search_says_it_abstained(engine):
    users = (new_memory_id(), "users")
    with MemAgentStore(engine=engine) as store:
        store.put((*users, "alice"), "car", {"drives": "a blue bus"})
        [result] = store.search(users, query="Who drives a red van?")
    assert result.value == {"query": "Who drives a red van?", "answer": ABSTENTION, "abstained": True}
