"""A LlamaIndex FunctionAgent calls a tool; MemAgentMemory writes the tool's output into memagent
memory; a later question is answered from that memory alone: no tool call, no retrieved text.

    python examples/llamaindex_agent.py                      # the embedded default model
    python examples/llamaindex_agent.py --model random:tiny  # plumbing only: random weights

FunctionAgent needs a function-calling LLM, and none runs offline here, so a scripted stand-in
(LlamaIndex's MockFunctionCallingLLM) plays that role: it calls `get_weather` once, then answers.
Plug in a real one instead, e.g. `Ollama(model="qwen3")` or `OpenAI(model="gpt-4o-mini")`.
To use a memagent server instead of an in-process engine, pass `server="host:port", token=...`
where the example passes `engine=engine`.
"""

import argparse
import json
import asyncio

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MockFunctionCallingLLM

import memagent
from llama_index.llms.memagent import MemAgentLLM
from llama_index.memory.memagent import MemAgentMemory

TASK = "What is the weather like in Oslo?"
QUESTION = "What temperature did the weather tool report for Oslo?"


def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return json.dumps({"city": city, "temp_c": 12, "sky": "light rain"})


def scripted_agent_llm() -> MockFunctionCallingLLM:
    """Stands in for a function-calling LLM: call get_weather once, then answer."""

    def respond(messages, **kwargs) -> ChatMessage:
        if any(m.role == "tool" for m in messages):
            return ChatMessage(role="assistant", content="It is 12 degrees with light rain in Oslo.")
        call = ToolCallBlock(tool_call_id="call_1", tool_name="get_weather", tool_kwargs={"city": "Oslo"})
        return ChatMessage(role="assistant", blocks=[call])

    return MockFunctionCallingLLM(response_generator=respond)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="memagent.load() source (default: the embedded default model)")
    args = parser.parse_args(argv)
    engine = memagent.load(args.model)

    # 1. The agent runs; at its end FunctionAgent puts the tool result into MemAgentMemory, which writes it.
    memory = MemAgentMemory(memory="trip", engine=engine)
    agent = FunctionAgent(tools=[get_weather], llm=scripted_agent_llm())
    handler = agent.run(TASK, memory=memory)
    async for event in handler.stream_events():
        if isinstance(event, ToolCallResult):
            print(f"agent called {event.tool_name}: {event.tool_output.content}")
    await handler
    print(f"writes in memory 'trip': {engine.pool('trip').step}")

    # 2. Later, a new conversation with nothing but the question: the answer comes from the memory.
    llm = MemAgentLLM(memory="trip", engine=engine, max_tokens=24)
    answer = await llm.achat([ChatMessage(role="user", content=QUESTION)], stop=["\n"])
    print(f"Q: {QUESTION}")
    print(f"A (from memory, no tools): {answer.message.content.strip()}")


if __name__ == "__main__":
    asyncio.run(main())
