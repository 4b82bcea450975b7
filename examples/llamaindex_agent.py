"""One LlamaIndex FunctionAgent serves two users: MemAgentMemory, one per user's session, writes
each run's tool output into that user's memagent memory; later, one LLM answers each user's
question from that user's memory alone: no tool call, no retrieved text, nothing of the other user's.

    python examples/llamaindex_agent.py                      # the embedded default model
    python examples/llamaindex_agent.py --model random:tiny  # plumbing only: random weights

FunctionAgent needs a function-calling LLM, and none runs offline here, so a scripted stand-in
(LlamaIndex's MockFunctionCallingLLM) plays that role: it calls `get_weather` once, then answers.
Plug in a real one instead, e.g. `Ollama(model="qwen3")` or `OpenAI(model="gpt-4o-mini")`.
To use a memagent server instead of an in-process engine, pass `server="host:port", token=...`
where the example passes `engine=engine` (or set MEMAGENT_SERVER and MEMAGENT_TOKEN and pass neither).
"""

import argparse
import asyncio
import json

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MockFunctionCallingLLM

import memagent
from llama_index.llms.memagent import MemAgentLLM
from llama_index.memory.memagent import MemAgentMemory

USERS = {"alice": "Oslo", "bob": "Lisbon"}
WEATHER = {"Oslo": {"temp_c": 12, "sky": "light rain"}, "Lisbon": {"temp_c": 24, "sky": "sunny"}}


def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return json.dumps({"city": city, **WEATHER[city]})


def scripted_agent_llm() -> MockFunctionCallingLLM:
    """Stands in for a function-calling LLM: call get_weather for the city asked about, then answer."""

    def respond(messages, **kwargs) -> ChatMessage:
        city = next(m.content for m in reversed(messages) if m.role == "user").rstrip("?").split()[-1]
        if any(m.role == "tool" for m in messages):
            return ChatMessage(role="assistant", content=f"Here is the weather in {city}.")
        call = ToolCallBlock(tool_call_id=f"call_{city}", tool_name="get_weather", tool_kwargs={"city": city})
        return ChatMessage(role="assistant", blocks=[call])

    return MockFunctionCallingLLM(response_generator=respond)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="memagent.load() source (default: the embedded default model)")
    args = parser.parse_args(argv)
    engine = memagent.load(args.model)

    # 1. One agent object; each run gets its user's memory (the session names the memagent memory).
    agent = FunctionAgent(tools=[get_weather], llm=scripted_agent_llm())
    for user, city in USERS.items():
        memory = MemAgentMemory.from_defaults(session_id=user, engine=engine, recall="questions")
        handler = agent.run(f"What is the weather like in {city}?", memory=memory)
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                print(f"{user}: agent called {event.tool_name}: {event.tool_output.content}")
        await handler
    print("writes per memory: " + ", ".join(f"{user} {engine.pool(user).step}" for user in USERS))

    # 2. Later, one LLM, nothing but the question: each answer comes from that user's memory.
    llm = MemAgentLLM(engine=engine, max_tokens=24)
    for user, city in USERS.items():
        question = f"What temperature did the weather tool report for {city}?"
        answer = await llm.achat([ChatMessage(role="user", content=question)], stop=["\n"], memory_id=user)
        print(f"{user} Q: {question}")
        print(f"{user} A (from memory '{user}', no tools): {answer.message.content.strip()}")


if __name__ == "__main__":
    asyncio.run(main())
