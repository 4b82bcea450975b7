"""MemAgentMiddleware in a `create_agent` agent: each tool result is written once as it arrives,
the finished turn after the agent ends, and the recall tool lets the agent ask the memory."""

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import StructuredTool, ToolException, tool

from langchain_memagent import MemAgentMiddleware
from tests.integrations.agent_fakes import ScriptedToolCallingModel, weather_agent_model

WEATHER = '{"tool": "get_weather", "city": "Oslo", "output": "Light rain, 12 degrees in Oslo."}'
TURN = "User: Weather in Oslo?\nAssistant: It is raining in Oslo."
QUESTION = {"messages": [{"role": "user", "content": "Weather in Oslo?"}]}


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"Light rain, 12 degrees in {city}."


def _no_weather(city: str) -> str:
    """Always fails; the caller sees the error as the tool's result."""
    raise ToolException("no weather today")


broken = StructuredTool.from_function(_no_weather, name="broken", handle_tool_error=True)


def test_tool_result_then_turn_are_written_once(target):
    middleware = MemAgentMiddleware(**target.kwargs)
    agent = create_agent(weather_agent_model(), tools=[get_weather], middleware=[middleware])
    result = agent.invoke(QUESTION)
    assert result["messages"][-1].content == "It is raining in Oslo."
    assert target.written() == [WEATHER, TURN]
    if target.kind == "server":
        assert target.sources() == ["langchain:agent:tool:get_weather", "langchain:agent:turn"]


async def test_async_agent_writes_the_same(target):
    middleware = MemAgentMiddleware(**target.kwargs)
    agent = create_agent(weather_agent_model(), tools=[get_weather], middleware=[middleware])
    await agent.ainvoke(QUESTION)
    assert target.written() == [WEATHER, TURN]


def test_turns_can_be_left_out(target):
    middleware = MemAgentMiddleware(**target.kwargs, record_turns=False)
    create_agent(weather_agent_model(), tools=[get_weather], middleware=[middleware]).invoke(QUESTION)
    assert target.written() == [WEATHER]


def test_a_failed_tool_call_is_not_written(target):
    call = {"name": "broken", "args": {"city": "Oslo"}, "id": "call_1", "type": "tool_call"}
    model = ScriptedToolCallingModel(messages=iter([AIMessage("", tool_calls=[call]), AIMessage("No luck.")]))
    middleware = MemAgentMiddleware(**target.kwargs, record_turns=False)
    agent = create_agent(model, tools=[broken], middleware=[middleware])
    agent.invoke(QUESTION)
    assert target.written() == []


def test_recall_tool_asks_the_memory_and_is_not_written_back(target):
    middleware = MemAgentMiddleware(**target.kwargs, record_turns=False)
    recall = middleware.recall_tool()
    call = {"name": "recall", "args": {"question": "Weather in Oslo?"}, "id": "call_1", "type": "tool_call"}
    model = ScriptedToolCallingModel(messages=iter([AIMessage("", tool_calls=[call]), AIMessage("Rain.")]))
    result = create_agent(model, tools=[recall], middleware=[middleware]).invoke(QUESTION)
    recalled = result["messages"][2]
    assert recalled.name == "recall" and recalled.status == "success"
    assert recalled.content == recall.invoke({"question": "Weather in Oslo?"})
    assert target.written() == []
