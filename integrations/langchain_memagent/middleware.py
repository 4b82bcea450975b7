"""LangChain agent middleware: an agent's tool results and finished turns go into a memory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from langchain.agents.middleware import AgentMiddleware, AgentState, ToolCallRequest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.runtime import Runtime
from langgraph.types import Command

from langchain_memagent.memory_choice import chosen_memory
from memagent.integration import records as memory_records
from memagent.integration.backend import ClosesBackend, MemoryBackend, connect

if TYPE_CHECKING:
    from memagent.engine import Engine

ToolResult = ToolMessage | Command


class MemAgentMiddleware(ClosesBackend, AgentMiddleware):
    """For `create_agent` with any tool-calling model: each tool result is written into the memory
    as it arrives (with the tool's name and arguments; failed calls, and tools that answer with a
    `Command` instead of a message, are not written), and the finished turn (the latest user
    message and the final answer; `record_turns="user"`: the user message only) after the agent
    ends. Each write carries log metadata: tool, tool_call_id, run_id, thread_id, user.

    Built without `memory`, one agent serves many users: each run names its memory in its runtime
    context (`create_agent(..., context_schema=...)` with a `memory_id` field) or in
    `config={"configurable": {"memory_id": ...}}`; see `langchain_memagent.memory_choice`.

    `recall_tool()` makes a tool through which the agent's model can ask the memory a question;
    its own answers are not written back. `grounded=True`: the tool answers "I don't know." where
    no write supports the answer (`memagent.Engine.grounding`; memories of whole writes).

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
        memory: str | None = None,
        *,
        server: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        engine: Engine | None = None,
        source: str = "langchain:agent",
        record_turns: bool | Literal["user"] = True,
        grounded: bool = False,
    ):
        super().__init__()
        self.backend = connect(memory, server=server, token=token, timeout=timeout, engine=engine)
        self.source = source
        self.record_turns = record_turns
        self.grounded = grounded  # the recall tool answers only where a write supports it (`Engine.grounding`)
        self._recall_tool_names: set[str] = set()

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]) -> ToolResult:
        result = handler(request)
        backend = self._backend_for(request.runtime.context)
        if record := self._tool_record(request, result, backend):
            backend.write(*record)
        return result

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolResult]]
    ) -> ToolResult:
        result = await handler(request)
        backend = self._backend_for(request.runtime.context)
        if record := self._tool_record(request, result, backend):
            await backend.awrite(*record)
        return result

    def after_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        if record := self._turn_record(state):
            backend = self._backend_for(runtime.context)
            backend.write(record, f"{self.source}:turn", self._metadata(backend))
        return None

    async def aafter_agent(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        if record := self._turn_record(state):
            backend = self._backend_for(runtime.context)
            await backend.awrite(record, f"{self.source}:turn", self._metadata(backend))
        return None

    def _backend_for(self, context: Any) -> MemoryBackend:
        """The backend of the memory this run names, else of `memory=`."""
        memory = chosen_memory(context=context)
        return self.backend.using(memory) if memory else self.backend

    def _metadata(self, backend: MemoryBackend, **fields: Any) -> dict[str, str]:
        config = ensure_config()
        thread = config.get("configurable", {}).get("thread_id")
        user = backend.memory if backend is not self.backend else None
        return memory_records.metadata(**fields, run_id=config.get("run_id"), thread_id=thread, user=user)

    def recall_tool(
        self,
        name: str = "recall",
        description: str = "Ask the long-term memory a question; it answers from what it has been told.",
    ) -> BaseTool:
        """A tool with one argument, `question`, answered by the memory the run names."""

        def recall(question: str) -> str:
            return self._backend_for(None).ask(question, self.grounded)

        async def arecall(question: str) -> str:
            return await self._backend_for(None).aask(question, self.grounded)

        self._recall_tool_names.add(name)
        return StructuredTool.from_function(func=recall, coroutine=arecall, name=name, description=description)

    def _tool_record(
        self, request: ToolCallRequest, result: ToolResult, backend: MemoryBackend
    ) -> tuple[str, str, dict] | None:
        """The text, source label and metadata to write for a finished tool call, if it succeeded."""
        name = request.tool_call["name"]
        if not isinstance(result, ToolMessage) or result.status == "error" or name in self._recall_tool_names:
            return None
        text = memory_records.tool_result(name, request.tool_call["args"], result.content)
        metadata = self._metadata(backend, tool=name, tool_call_id=request.tool_call.get("id"))
        return text, f"{self.source}:tool:{name}", metadata

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
        if answers and self.record_turns != "user":
            return memory_records.turn(user, str(answers[-1].text))
        return memory_records.user_message(user)
