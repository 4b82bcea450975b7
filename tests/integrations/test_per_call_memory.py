"""One adapter object, many users: each call names its memory, and concurrent runs for two users
through one object never read or write each other's memory."""

import asyncio
from dataclasses import dataclass

import pytest
from langchain.agents import create_agent
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory

from langchain_memagent import ChatMemAgent, MemAgentCallbackHandler, MemAgentLLM, MemAgentMiddleware
from llama_index.llms.memagent import MemAgentLLM as LlamaMemAgentLLM
from llama_index.memory.memagent import MemAgentMemory, MemAgentMemoryBlock
from llama_index.memory.memagent.base import RECALL_PREFIX
from memagent.integration.backend import connect
from tests.integrations.agent_fakes import CityWeatherModel
from tests.integrations.conftest import new_memory_id
from tests.integrations.test_llamaindex_memory import scripted_weather_llm

CITIES = {"Oslo": "light rain", "Lisbon": "sunny"}


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"{CITIES.get(city, 'fog')} in {city}"


@dataclass
class UserContext:
    memory_id: str


@pytest.fixture(params=["engine", "server"])
def reach(request) -> dict:
    """How to reach memories, without naming one."""
    if request.param == "engine":
        return {"engine": request.getfixturevalue("tiny_engine")}
    return {"server": request.getfixturevalue("server_address")}


@pytest.fixture
def two_users() -> tuple[str, str]:
    return new_memory_id(), new_memory_id()


def written(reach: dict, memory: str) -> list[str]:
    return [e.text for e in connect(**reach).using(memory).entries()]


def metadata(reach: dict, memory: str) -> list[dict]:
    return [e.metadata for e in connect(**reach).using(memory).entries()]


async def test_chat_model_turns_of_two_users_never_mix(reach, two_users):
    chat = ChatMemAgent(**reach, max_tokens=4, remember_turns="user")
    runs = [
        chat.ainvoke(f"{name} note {i}", config={"configurable": {"memory_id": memory}})
        for i in range(3)
        for name, memory in zip(("alice", "bob"), two_users)
    ]
    await asyncio.gather(*runs)
    for name, memory in zip(("alice", "bob"), two_users):
        assert sorted(written(reach, memory)) == [f"User: {name} note {i}" for i in range(3)]
        assert {m["user"] for m in metadata(reach, memory)} == {memory}


def test_chat_model_without_a_memory_says_how_to_name_one(reach):
    with pytest.raises(ValueError, match="memory_id"):
        ChatMemAgent(**reach, max_tokens=4).invoke("Hello")


def test_a_call_names_its_memory_in_a_chain_batch_and_stream(reach, two_users):
    alice, bob = two_users
    llm = MemAgentLLM(**reach, max_tokens=4)
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | ChatMemAgent(**reach, max_tokens=4, remember_turns="user")
    chain.invoke({"q": "from the chain"}, config={"configurable": {"memory_id": alice}})
    chain.batch([{"q": "batched a"}, {"q": "batched b"}], config=[
        {"configurable": {"memory_id": alice}}, {"configurable": {"memory_id": bob}}
    ])
    list(chain.stream({"q": "streamed"}, config={"configurable": {"memory_id": bob}}))
    assert written(reach, alice) == ["User: from the chain", "User: batched a"]
    assert written(reach, bob) == ["User: batched b", "User: streamed"]
    # The LLM reads the memory the call names: its answer is that memory's continuation.
    answers = llm.batch(["The", "The"], config=[{"configurable": {"memory_id": m}} for m in two_users])
    assert answers == ["".join(connect(**reach).using(m).generate("The", llm._sampling(None))) for m in two_users]


async def test_one_agent_with_runtime_context_serves_two_users_concurrently(reach, two_users):
    middleware = MemAgentMiddleware(**reach)
    agent = create_agent(CityWeatherModel(), tools=[get_weather], middleware=[middleware], context_schema=UserContext)
    runs = [
        agent.ainvoke({"messages": [{"role": "user", "content": f"Weather in {city}?"}]}, context=UserContext(memory))
        for city, memory in zip(CITIES, two_users)
        for _ in range(2)
    ]
    await asyncio.gather(*runs)
    for city, memory in zip(CITIES, two_users):
        tool_line = f'{{"tool": "get_weather", "city": "{city}", "output": "{CITIES[city]} in {city}"}}'
        turn = f"User: Weather in {city}?\nAssistant: Noted: {CITIES[city]} in {city}"
        assert sorted(written(reach, memory)) == sorted([tool_line, turn] * 2)
        tool_meta = [m for m in metadata(reach, memory) if "tool" in m]
        assert {(m["tool"], m["tool_call_id"], m["user"]) for m in tool_meta} == {("get_weather", f"call_{city}", memory)}


def test_one_agent_takes_the_memory_from_configurable(reach, two_users):
    agent = create_agent(CityWeatherModel(), tools=[get_weather], middleware=[MemAgentMiddleware(**reach, record_turns=False)])
    agent.batch(
        [{"messages": [{"role": "user", "content": f"Weather in {city}?"}]} for city in CITIES],
        config=[{"configurable": {"memory_id": memory, "thread_id": f"t-{memory}"}} for memory in two_users],
    )
    for city, memory in zip(CITIES, two_users):
        assert written(reach, memory) == [f'{{"tool": "get_weather", "city": "{city}", "output": "{CITIES[city]} in {city}"}}']
        assert metadata(reach, memory)[0]["thread_id"] == f"t-{memory}"


def test_callback_handler_writes_each_run_to_the_memory_it_names(reach, two_users):
    handler = MemAgentCallbackHandler(**reach, record_inputs=True)
    chain = RunnableLambda(lambda city: get_weather.invoke({"city": city}))
    for city, memory in zip(CITIES, two_users):
        chain.invoke(city, config={"callbacks": [handler], "metadata": {"memory_id": memory}})
    # Inside a graph the tool run sees the configurable; the top-level run only its metadata.
    agent = create_agent(CityWeatherModel(), tools=[get_weather])
    tools_only = MemAgentCallbackHandler(**reach)
    agent.invoke(
        {"messages": [{"role": "user", "content": "Weather in Oslo?"}]},
        config={"callbacks": [tools_only], "configurable": {"memory_id": two_users[1]}},
    )
    alice, bob = (written(reach, m) for m in two_users)
    assert alice == ["User: Oslo", '{"tool": "get_weather", "city": "Oslo", "output": "light rain in Oslo"}']
    assert bob[:2] == ["User: Lisbon", '{"tool": "get_weather", "city": "Lisbon", "output": "sunny in Lisbon"}']
    assert bob[2:] == ['{"tool": "get_weather", "city": "Oslo", "output": "light rain in Oslo"}']


async def test_one_function_agent_with_a_memory_per_session(reach, two_users):
    agent = FunctionAgent(tools=[get_weather.func], llm=scripted_weather_llm())
    memories = [MemAgentMemory.from_defaults(session_id=m, **reach, recall="never") for m in two_users]
    await asyncio.gather(*(agent.run(f"Weather for {m}?", memory=mem) for m, mem in zip(two_users, memories)))
    for memory in two_users:
        assert written(reach, memory)[0] == f"User: Weather for {memory}?"


async def test_llamaindex_llm_reads_the_memory_a_call_names(reach, two_users):
    llm = LlamaMemAgentLLM(**reach, max_tokens=4)
    for memory in two_users:
        answer = await llm.acomplete("The", formatted=True, memory_id=memory)
        assert answer.text == "".join(connect(**reach).using(memory).generate("The", llm._options({})))


async def test_memory_block_writes_and_recalls_per_session(reach, two_users):
    block = MemAgentMemoryBlock(**reach)
    for memory, city in zip(two_users, CITIES):
        session = Memory.from_defaults(
            session_id=memory, memory_blocks=[block], token_limit=60, chat_history_token_ratio=0.2, token_flush_size=20
        )
        for i in range(4):
            await session.aput(ChatMessage(role="user", content=f"I live in {city}, note {i}."))
            await session.aput(ChatMessage(role="assistant", content=f"Noted {i}."))
        await session.aget()
    question = [ChatMessage(role="user", content="Where do I live?")]
    for memory, city in zip(two_users, CITIES):
        texts = written(reach, memory)  # what the Memory flushed out of its window
        assert texts and all(city in t or t.startswith("Assistant: Noted") for t in texts)
        recalled = connect(**reach).using(memory).ask("Where do I live?")
        assert await block.aget(question, session_id=memory) == (RECALL_PREFIX + recalled if recalled else "")
