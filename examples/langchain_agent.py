"""A LangChain agent calls a tool; the tool's output lands in memagent memory; a later question is
answered from that memory alone: no tool call, no retrieved text in the prompt.

    python examples/langchain_agent.py                      # the embedded default model
    python examples/langchain_agent.py --model random:tiny  # plumbing only: random weights

The agent needs a tool-calling chat model, and none runs offline here, so a scripted stand-in
(LangChain's GenericFakeChatModel) plays that role: it calls `get_weather` once, then answers.
Plug in a real one instead, e.g. `init_chat_model("ollama:qwen3")` or `ChatOpenAI(model="gpt-4o-mini")`.
To use a memagent server instead of an in-process engine, pass `server="host:port", token=...`
where the example passes `engine=engine`.
"""

import argparse
import json

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

import memagent
from langchain_memagent import ChatMemAgent, MemAgentMiddleware

TASK = "What is the weather like in Oslo?"
QUESTION = "What temperature did the weather tool report for Oslo?"


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return json.dumps({"city": city, "temp_c": 12, "sky": "light rain"})


class ScriptedAgentModel(GenericFakeChatModel):
    """Stands in for a tool-calling model: replies with its scripted messages in turn."""

    def bind_tools(self, tools, **kwargs):
        return self


def scripted_agent_model() -> ScriptedAgentModel:
    call = {"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1", "type": "tool_call"}
    answer = AIMessage("It is 12 degrees with light rain in Oslo.")
    return ScriptedAgentModel(messages=iter([AIMessage("", tool_calls=[call]), answer]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="memagent.load() source (default: the embedded default model)")
    args = parser.parse_args(argv)
    engine = memagent.load(args.model)

    # 1. The agent runs; the middleware writes the tool's output (and the finished turn) into memory "trip".
    memory = MemAgentMiddleware(memory="trip", engine=engine)
    agent = create_agent(scripted_agent_model(), tools=[get_weather], middleware=[memory])
    result = agent.invoke({"messages": [{"role": "user", "content": TASK}]})
    tool_calls = [m for m in result["messages"] if m.type == "tool"]
    print(f"agent called {tool_calls[0].name}: {tool_calls[0].content}")
    print(f"writes in memory 'trip': {engine.pool('trip').step}")

    # 2. Later, a new conversation with nothing but the question: the answer comes from the memory.
    chat = ChatMemAgent(memory="trip", engine=engine, max_tokens=24, stop=["\n"])
    print(f"Q: {QUESTION}")
    print(f"A (from memory, no tools): {chat.invoke(QUESTION).content.strip()}")


if __name__ == "__main__":
    main()
