"""LangChain agent middleware: an agent's tool results and finished turns go into a memory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ToolCallRequest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.runtime import Runtime
from langgraph.types import Command

from memagent.integration import records as memory_records
from memagent.integration.backend import connect

if TYPE_CHECKING:
    from memagent.engine import Engine

ToolResult = ToolMessage | Command


class MemAgentMiddleware(AgentMiddleware):
    """For `create_agent` with any tool-calling model: each tool result is written into the memory
    as it arrives (with the tool's name and arguments; failed calls, and tools that answer with a
    `Command` instead of a message, are not written), and the finished turn (the latest user
    message and the final answer) after the agent ends.

    `recall_tool()` makes a tool through which the agent's model can ask the memory a question;
    its own answers are not written back.

    Example:
        ```python
        import memagent
        from langchain.agents import create_agent
        from langchain_memagent import MemAgentMiddleware

        memory = MemAgentMiddleware(memory="trip", engine=memagent.load())  # or server=..., token=...
        agent = create_agent(
            "ollama:qwen3",  # any tool-calling chat model
            tools=[get_weather, memory.recall_tool()],
            middleware=[memory],
        )
        agent.invoke({"messages": [{"role": "user", "content": "What is the weather in Oslo?"}]})
        ```
    """

    def __init__(
        self,
        memory: str,
        *,
        server: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        engine: Engine | None = None,
        source: str = "langchain:agent",
        record_turns: bool = True,
    ):
        super().__init__()
        self.backend = connect(memory, server=server, token=token, timeout=timeout, engine=engine)
        self.source = source
        self.record_turns = record_turns
        self._recall_tool_names: set[str] = set()

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]) -> ToolResult:
        result = handler(request)
        if record := self._tool_record(request, result):
            self.backend.write(*record)
        return result

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolResult]]
    ) -> ToolResult:
        result = await handler(request)
        if record := self._tool_record(request, result):
            await self.backend.awrite(*record)
        return result

    def after_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        if record := self._turn_record(state):
            self.backend.write(record, f"{self.source}:turn")
        return None

    async def aafter_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        if record := self._turn_record(state):
            await self.backend.awrite(record, f"{self.source}:turn")
        return None

    def recall_tool(
        self,
        name: str = "recall",
        description: str = "Ask the long-term memory a question; it answers from what it has been told.",
    ) -> BaseTool:
        """A tool with one argument, `question`, answered by the memory."""
        backend = self.backend

        def recall(question: str) -> str:
            return backend.ask(question)

        async def arecall(question: str) -> str:
            return await backend.aask(question)

        self._recall_tool_names.add(name)
        return StructuredTool.from_function(func=recall, coroutine=arecall, name=name, description=description)

    def _tool_record(self, request: ToolCallRequest, result: ToolResult) -> tuple[str, str] | None:
        """The text and source label to write for a finished tool call, if it succeeded."""
        name = request.tool_call["name"]
        if not isinstance(result, ToolMessage) or result.status == "error" or name in self._recall_tool_names:
            return None
        text = memory_records.tool_result(name, request.tool_call["args"], result.content)
        return text, f"{self.source}:tool:{name}"

    def _turn_record(self, state: AgentState) -> str | None:
        """The latest user message with the answer the agent gave to it."""
        if not self.record_turns:
            return None
        messages = state["messages"]
        asked = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], HumanMessage)), None)
        if asked is None:
            return None
        answers = [m for m in messages[asked + 1 :] if isinstance(m, AIMessage) and str(m.text)]
        user = str(messages[asked].text)
        return memory_records.turn(user, str(answers[-1].text)) if answers else memory_records.user_message(user)
