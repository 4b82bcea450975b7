"""One LangChain agent serves two users: each run's tool output lands in that user's memagent
memory; later, one chat model answers each user's question from that user's memory alone: no tool
call, no retrieved text in the prompt, and nothing of the other user's.

    python examples/langchain_agent.py                      # the embedded default model
    python examples/langchain_agent.py --model random:tiny  # plumbing only: random weights

The agent needs a tool-calling chat model, and none runs offline here, so a scripted stand-in
(LangChain's GenericFakeChatModel) plays that role: per run it calls `get_weather` once, then answers.
Plug in a real one instead, e.g. `init_chat_model("ollama:qwen3")` or `ChatOpenAI(model="gpt-4o-mini")`.
To use a memagent server instead of an in-process engine, pass `server="host:port", token=...`
where the example passes `engine=engine` (or set MEMAGENT_SERVER and MEMAGENT_TOKEN and pass neither).
"""

import argparse
import json
from dataclasses import dataclass

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

import memagent
from langchain_memagent import ChatMemAgent, MemAgentMiddleware

USERS = {"alice": "Oslo", "bob": "Lisbon"}
WEATHER = {"Oslo": {"temp_c": 12, "sky": "light rain"}, "Lisbon": {"temp_c": 24, "sky": "sunny"}}


@dataclass
class UserContext:
    memory_id: str  # the memory this run reads and writes


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return json.dumps({"city": city, **WEATHER[city]})


class ScriptedAgentModel(GenericFakeChatModel):
    """Stands in for a tool-calling model: replies with its scripted messages in turn."""

    def bind_tools(self, tools, **kwargs):
        return self


def scripted_agent_model() -> ScriptedAgentModel:
    script = []
    for city in USERS.values():
        call = {"name": "get_weather", "args": {"city": city}, "id": f"call_{city}", "type": "tool_call"}
        script += [AIMessage("", tool_calls=[call]), AIMessage(f"Here is the weather in {city}.")]
    return ScriptedAgentModel(messages=iter(script))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="memagent.load() source (default: the embedded default model)")
    args = parser.parse_args(argv)
    engine = memagent.load(args.model)

    # 1. One agent object; each run names its user's memory in the runtime context.
    memory = MemAgentMiddleware(engine=engine)
    agent = create_agent(scripted_agent_model(), tools=[get_weather], middleware=[memory], context_schema=UserContext)
    for user, city in USERS.items():
        task = {"messages": [{"role": "user", "content": f"What is the weather like in {city}?"}]}
        result = agent.invoke(task, context=UserContext(memory_id=user))
        tool_call = next(m for m in result["messages"] if m.type == "tool")
        print(f"{user}: agent called {tool_call.name}: {tool_call.content}")
    print("writes per memory: " + ", ".join(f"{user} {engine.pool(user).step}" for user in USERS))

    # 2. Later, one chat model, nothing but the question: each answer comes from that user's memory.
    chat = ChatMemAgent(engine=engine, max_tokens=24, stop=["\n"])
    for user, city in USERS.items():
        question = f"What temperature did the weather tool report for {city}?"
        answer = chat.invoke(question, config={"configurable": {"memory_id": user}})
        print(f"{user} Q: {question}")
        print(f"{user} A (from memory '{user}', no tools): {answer.content.strip()}")


if __name__ == "__main__":
    main()
