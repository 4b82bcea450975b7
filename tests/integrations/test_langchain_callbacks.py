"""MemAgentCallbackHandler writes exactly what ran: each tool output once, with the tool's name
and input, and (when asked) the outermost run's input and final answer."""

import pytest
from langchain.agents import create_agent
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import StructuredTool, ToolException, tool

from langchain_memagent import MemAgentCallbackHandler
from tests.integrations.agent_fakes import weather_agent_model

WEATHER = '{"tool": "get_weather", "city": "Oslo", "output": "Light rain, 12 degrees in Oslo."}'


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"Light rain, 12 degrees in {city}."


def _no_weather(city: str) -> str:
    """Always fails; the caller sees the error as the tool's result."""
    raise ToolException("no weather today")


broken = StructuredTool.from_function(_no_weather, name="broken", handle_tool_error=True)


@tool
def unhandled(city: str) -> str:
    """Always raises."""
    raise RuntimeError("no weather today")


def test_tool_output_is_written_with_name_and_input(target):
    handler = MemAgentCallbackHandler(**target.kwargs)
    get_weather.invoke({"city": "Oslo"}, config={"callbacks": [handler]})
    assert target.written() == [WEATHER]
    if target.kind == "server":
        assert target.sources() == ["langchain:tool:get_weather"]


async def test_tool_output_is_written_on_the_async_path(target):
    handler = MemAgentCallbackHandler(**target.kwargs, source="trip")
    await get_weather.ainvoke({"city": "Oslo"}, config={"callbacks": [handler]})
    assert target.written() == [WEATHER]
    if target.kind == "server":
        assert target.sources() == ["trip:tool:get_weather"]


def test_a_failed_tool_writes_nothing(target):
    handler = MemAgentCallbackHandler(**target.kwargs)
    call = {"name": "broken", "args": {"city": "Oslo"}, "id": "call_1", "type": "tool_call"}
    assert broken.invoke(call, config={"callbacks": [handler]}).status == "error"
    with pytest.raises(RuntimeError):
        unhandled.invoke({"city": "Oslo"}, config={"callbacks": [handler]})
    assert target.written() == []


def test_agent_run_writes_tool_output_once_then_input_and_answer(target):
    handler = MemAgentCallbackHandler(**target.kwargs, record_inputs=True, record_answers=True)
    agent = create_agent(weather_agent_model(), tools=[get_weather])
    agent.invoke({"messages": [{"role": "user", "content": "Weather in Oslo?"}]}, config={"callbacks": [handler]})
    assert target.written() == ["User: Weather in Oslo?", WEATHER, "Assistant: It is raining in Oslo."]
    if target.kind == "server":
        assert target.sources() == ["langchain:user", "langchain:tool:get_weather", "langchain:answer"]


def test_any_runnable_records_its_outermost_input_and_output(target):
    handler = MemAgentCallbackHandler(**target.kwargs, record_inputs=True, record_answers=True)
    shout = RunnableLambda(str.upper) | RunnableLambda(lambda s: s + "!")
    shout.invoke("the keys are on the hook", config={"callbacks": [handler]})
    assert target.written() == ["User: the keys are on the hook", "Assistant: THE KEYS ARE ON THE HOOK!"]


def test_inputs_and_answers_are_not_written_unless_asked(target):
    handler = MemAgentCallbackHandler(**target.kwargs)
    RunnableLambda(str.upper).invoke("hello", config={"callbacks": [handler]})
    assert target.written() == []
