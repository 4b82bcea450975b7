"""LangChain callback handler: what tools return (and, if asked, what users say) goes into a memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage, convert_to_messages

from langchain_memagent.memory_choice import chosen_memory
from memagent.integration import records as memory_records
from memagent.integration.backend import ClosesBackend, MemoryBackend, connect

if TYPE_CHECKING:
    from memagent.engine import Engine


class MemAgentCallbackHandler(ClosesBackend, BaseCallbackHandler):
    """Writes every tool output, with the tool's name and input, into a memory.

    Works for any Runnable or agent through `config={"callbacks": [handler]}`. With
    `record_inputs` / `record_answers` it also writes the input and the final output of the
    outermost run. Each record carries a source label (`source` plus ":tool:<name>", ":user",
    ":answer") and log metadata (tool, tool_call_id, run_id, user). A tool that failed writes
    nothing. Write errors are raised, not logged.

    Built without `memory`, one handler serves many users: each run names its memory (see
    `langchain_memagent.memory_choice`; a top-level run that is not a graph or a chain names it
    in `config={"metadata": {"memory_id": ...}}`, since LangChain shows callbacks no configurable).

    Example:
        ```python
        import memagent
        from langchain_core.tools import tool
        from langchain_memagent import MemAgentCallbackHandler

        @tool
        def get_weather(city: str) -> str:
            \"\"\"Today's weather in a city.\"\"\"
            return f"Light rain and 12 degrees in {city}."

        engine = memagent.load()
        handler = MemAgentCallbackHandler(memory="trip", engine=engine)
        get_weather.invoke({"city": "Oslo"}, config={"callbacks": [handler]})
        print(engine.pool("trip").ask("What is the weather in Oslo?"))
        ```
    """

    raise_error = True

    def __init__(
        self,
        memory: str | None = None,
        *,
        server: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        engine: Engine | None = None,
        source: str = "langchain",
        record_inputs: bool = False,
        record_answers: bool = False,
    ):
        self.backend = connect(memory, server=server, token=token, timeout=timeout, engine=engine)
        self.source = source
        self.record_inputs = record_inputs
        self.record_answers = record_answers
        self._running_tools: dict[UUID, tuple[str, Any, str | None]] = {}
        self._run_memories: dict[UUID, str | None] = {}

    def _name_memory(self, run_id: UUID, parent_run_id: UUID | None, metadata: dict[str, Any] | None) -> None:
        """Note the memory a run names; a run that names none inherits its parent's."""
        self._run_memories[run_id] = chosen_memory(metadata=metadata) or self._run_memories.get(parent_run_id)

    def _write(self, run_id: UUID, text: str, source: str, **fields: Any) -> None:
        memory = self._run_memories.get(run_id)
        backend: MemoryBackend = self.backend.using(memory) if memory else self.backend
        backend.write(text, source, memory_records.metadata(**fields, run_id=run_id, user=memory))

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        self._running_tools[run_id] = (name, inputs if inputs is not None else input_str, kwargs.get("tool_call_id"))
        self._name_memory(run_id, parent_run_id, metadata)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        name, tool_input, call_id = self._running_tools.pop(run_id)
        if not (isinstance(output, ToolMessage) and output.status == "error"):  # not a handled tool error
            content = output.content if isinstance(output, BaseMessage) else output
            text = memory_records.tool_result(name, tool_input, content)
            self._write(run_id, text, f"{self.source}:tool:{name}", tool=name, tool_call_id=call_id)
        self._run_memories.pop(run_id, None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._running_tools.pop(run_id, None)
        self._run_memories.pop(run_id, None)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._name_memory(run_id, parent_run_id, metadata)
        if self.record_inputs and parent_run_id is None and (text := _last_text(inputs, HumanMessage)):
            self._write(run_id, memory_records.user_message(text), f"{self.source}:user")

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if self.record_answers and parent_run_id is None and (text := _last_text(outputs, AIMessage)):
            self._write(run_id, memory_records.assistant_message(text), f"{self.source}:answer")
        self._run_memories.pop(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._run_memories.pop(run_id, None)


_TEXT_KEYS = ("input", "question", "query", "output", "answer")


def _last_text(value: Any, message_type: type[BaseMessage]) -> str | None:
    """The text of a run's input or output: a string, a message, the last message of
    `message_type` in a "messages" list, or a string under a conventional key."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, BaseMessage):
        return str(value.text) or None
    if not isinstance(value, dict):
        return None
    if value.get("messages"):
        messages = [m for m in convert_to_messages(value["messages"]) if isinstance(m, message_type)]
        return (str(messages[-1].text) or None) if messages else None
    return next((value[k] for k in _TEXT_KEYS if isinstance(value.get(k), str) and value[k]), None)
