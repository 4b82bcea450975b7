"""LlamaIndex MemAgentMemory: new messages (tool results included) are written once; get() returns
the recent window after what the memory recalls for the latest user message."""

import pytest
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MockFunctionCallingLLM

from llama_index.memory.memagent import MemAgentMemory
from llama_index.memory.memagent.base import RECALL_PREFIX
from tests.integrations.conftest import new_memory_id

WEATHER = '{"tool": "get_weather", "city": "Oslo", "output": "Light rain, 12 degrees in Oslo."}'


def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"Light rain, 12 degrees in {city}."


def scripted_weather_llm() -> MockFunctionCallingLLM:
    """The agent's tool-calling model (cannot run here): call get_weather once, then answer."""

    def respond(messages, **kwargs) -> ChatMessage:
        if any(m.role == "tool" for m in messages):
            return ChatMessage(role="assistant", content="It is raining in Oslo.")
        call = ToolCallBlock(tool_call_id="call_1", tool_name="get_weather", tool_kwargs={"city": "Oslo"})
        return ChatMessage(role="assistant", blocks=[call])

    return MockFunctionCallingLLM(response_generator=respond)


def assert_recall(messages: list[ChatMessage], memory: MemAgentMemory) -> None:
    """At most one system message, with what the memory recalled (a random model may recall nothing)."""
    assert len(messages) <= 1
    assert all(m.role == "system" and m.content.startswith(RECALL_PREFIX) for m in messages)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def test_put_writes_each_message_once(target):
    memory = MemAgentMemory(**target.kwargs)
    memory.put(user("My sister Mia lives in Lisbon."))
    memory.put_messages([ChatMessage(role="assistant", content="Noted."), ChatMessage(role="system", content="x")])
    memory.set(memory.get_all() + [user("She is a pilot.")])
    assert target.written() == ["User: My sister Mia lives in Lisbon.", "Assistant: Noted.", "User: She is a pilot."]
    if target.kind == "server":
        assert target.sources() == ["llamaindex:user", "llamaindex:assistant", "llamaindex:user"]


async def test_async_writes_match_sync(target):
    memory = MemAgentMemory(**target.kwargs)
    await memory.aput(user("My sister Mia lives in Lisbon."))
    await memory.aput_messages([ChatMessage(role="assistant", content="Noted.")])
    await memory.aset(memory.get_all() + [user("She is a pilot.")])
    assert target.written() == ["User: My sister Mia lives in Lisbon.", "Assistant: Noted.", "User: She is a pilot."]


def test_get_returns_recall_then_recent_window(target):
    memory = MemAgentMemory(**target.kwargs, window=2)
    for i in range(3):
        memory.put_messages([user(f"question {i}"), ChatMessage(role="assistant", content=f"answer {i}")])
    *recall, question, answer = memory.get()
    assert [question.content, answer.content] == ["question 2", "answer 2"]
    assert_recall(recall, memory)
    assert len(memory.get_all()) == 6


async def test_aget_recalls_for_the_given_input(target):
    memory = MemAgentMemory(**target.kwargs)
    memory.put(user("Hello"))
    *recall, hello = await memory.aget(input="Where does Mia live?")
    assert [hello] == memory.get_all()
    assert_recall(recall, memory)


def test_reset_empties_window_and_memory(target):
    memory = MemAgentMemory(**target.kwargs)
    memory.put(user("My sister Mia lives in Lisbon."))
    assert target.step() > 0
    memory.reset()
    assert memory.get_all() == [] and memory.get() == [] and target.step() == 0


async def test_areset_empties_window_and_memory(target):
    memory = MemAgentMemory(**target.kwargs)
    await memory.aput(user("My sister Mia lives in Lisbon."))
    await memory.areset()
    assert memory.get_all() == [] and target.step() == 0


async def test_function_agent_run_writes_user_tool_result_and_answer(target):
    memory = MemAgentMemory(**target.kwargs)
    agent = FunctionAgent(tools=[get_weather], llm=scripted_weather_llm())
    response = await agent.run("Weather in Oslo?", memory=memory)
    assert str(response) == "It is raining in Oslo."
    assert target.written() == ["User: Weather in Oslo?", WEATHER, "Assistant: It is raining in Oslo."]
    if target.kind == "server":
        assert target.sources() == ["llamaindex:user", "llamaindex:tool:get_weather", "llamaindex:assistant"]


def _no_generation(*args, **kwargs):
    raise AssertionError("recall ran a generation")


def test_recall_questions_only_and_never_cost_no_generation(tiny_engine, monkeypatch):
    memory = MemAgentMemory(memory=new_memory_id(), engine=tiny_engine, recall="questions")
    memory.put(user("Thanks, that's all."))
    with monkeypatch.context() as patch:
        patch.setattr(tiny_engine, "stream", _no_generation)
        assert memory.get() == memory.get_all()
        never = MemAgentMemory(memory=memory.memory, engine=tiny_engine, recall="never")
        assert never.get("Where does Mia live?") == []
    *recall, _ = memory.get("Where does Mia live?")
    assert_recall(recall, memory)


def test_assistant_messages_can_be_left_out(target):
    memory = MemAgentMemory(**target.kwargs, remember_assistant=False)
    memory.put_messages([user("Is Mia a pilot?"), ChatMessage(role="assistant", content="Yes, Mia is a doctor.")])
    assert target.written() == ["User: Is Mia a pilot?"]


def test_an_unknown_recall_mode_is_refused_at_construction(tiny_engine):
    with pytest.raises(ValueError, match="'always', 'questions' or 'never'"):
        MemAgentMemory(memory=new_memory_id(), engine=tiny_engine, recall="sometimes")
