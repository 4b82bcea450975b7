"""LlamaIndex memory: the conversation and its tool results go into a memagent memory; the prompt
keeps a recent window plus what the memory recalls for the latest user message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, List, Optional

from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.types import BaseMemory

from memagent.integration import records as memory_records
from memagent.integration.fields import MemoryConnection

RECALL_PREFIX = "Long-term memory, on the latest user message: "


class MemAgentMemory(MemoryConnection, BaseMemory):
    """Chat memory whose long-term store is a MemoryLLM memory.

    `put`, `put_messages` and `set` (and their async forms) write each new message into the
    memory: user and assistant text, and tool results with the name and arguments of the call
    that produced them (FunctionAgent puts those at the end of a run). `get` returns the last
    `window` messages (starting at a user message) after a system message with the memory's
    answer to the latest user message. `reset` empties the window and the memory.

    Example:
        ```python
        import memagent
        from llama_index.core.llms import ChatMessage
        from llama_index.memory.memagent import MemAgentMemory

        memory = MemAgentMemory(memory="trip", engine=memagent.load())  # or server=..., token=...
        memory.put(ChatMessage(role="user", content="My flight leaves from gate B12."))
        memory.reset()  # the window and the memory start over
        memory.put(ChatMessage(role="user", content="They moved my flight to gate C4."))
        print(memory.get("Which gate does my flight leave from?"))
        # In an agent: await FunctionAgent(tools=..., llm=<function-calling LLM>).run(msg, memory=memory)
        ```
    """

    window: int = Field(default=8, description="Recent messages that get() returns besides the recall.")
    source: str = Field(default="llamaindex", description="Source label of the records written.")

    _messages: List[ChatMessage] = PrivateAttr(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "MemAgentMemory"

    @classmethod
    def from_defaults(cls, **kwargs: Any) -> "MemAgentMemory":
        return cls(**kwargs)

    # -- writing -------------------------------------------------------------------------------

    def put(self, message: ChatMessage) -> None:
        self.put_messages([message])

    async def aput(self, message: ChatMessage) -> None:
        await self.aput_messages([message])

    def put_messages(self, messages: List[ChatMessage]) -> None:
        for text, source in self._records(messages):
            self.backend.write(text, source)
        self._messages.extend(messages)

    async def aput_messages(self, messages: List[ChatMessage]) -> None:
        for text, source in self._records(messages):
            await self.backend.awrite(text, source)
        self._messages.extend(messages)

    def set(self, messages: List[ChatMessage]) -> None:
        for text, source in self._records(self._unseen(messages), context=messages):
            self.backend.write(text, source)
        self._messages = list(messages)

    async def aset(self, messages: List[ChatMessage]) -> None:
        for text, source in self._records(self._unseen(messages), context=messages):
            await self.backend.awrite(text, source)
        self._messages = list(messages)

    # -- reading -------------------------------------------------------------------------------

    def get(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        recent = self._recent()
        question = input or _latest_user_text(recent)
        return self._with_recall(recent, self.backend.ask(question) if question else "")

    async def aget(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        recent = self._recent()
        question = input or _latest_user_text(recent)
        return self._with_recall(recent, await self.backend.aask(question) if question else "")

    def get_all(self) -> List[ChatMessage]:
        return list(self._messages)

    def reset(self) -> None:
        self._messages = []
        self.backend.reset()

    async def areset(self) -> None:
        self._messages = []
        await self.backend.areset()

    # -- helpers -------------------------------------------------------------------------------

    def _unseen(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        return [m for m in messages if m not in self._messages]

    def _records(self, new: Sequence[ChatMessage], context: Sequence[ChatMessage] = ()) -> list[tuple[str, str]]:
        """Text and source label for each new message worth writing (system prompts are not)."""
        calls = {
            block.tool_call_id: block
            for message in [*self._messages, *context, *new]
            for block in message.blocks
            if isinstance(block, ToolCallBlock)
        }
        records = []
        for message in new:
            text = (message.content or "").strip()
            if not text:
                continue
            if message.role == MessageRole.USER:
                records.append((memory_records.user_message(text), f"{self.source}:user"))
            elif message.role == MessageRole.ASSISTANT:
                records.append((memory_records.assistant_message(text), f"{self.source}:assistant"))
            elif message.role == MessageRole.TOOL:
                call = calls.get(message.additional_kwargs.get("tool_call_id"))
                name = call.tool_name if call else message.additional_kwargs.get("name", "tool")
                arguments = call.tool_kwargs if call else {}
                records.append((memory_records.tool_result(name, arguments, text), f"{self.source}:tool:{name}"))
        return records

    def _recent(self) -> List[ChatMessage]:
        """The last `window` messages, from the first user message among them (so no tool result
        is cut from its call); the latest user message is always kept."""
        tail = max(0, len(self._messages) - self.window)
        users = [i for i, m in enumerate(self._messages) if m.role == MessageRole.USER]
        later = [i for i in users if i >= tail]
        start = later[0] if later else (users[-1] if users else tail)
        return self._messages[start:]

    @staticmethod
    def _with_recall(recent: List[ChatMessage], recalled: str) -> List[ChatMessage]:
        if not recalled:
            return recent
        return [ChatMessage(role=MessageRole.SYSTEM, content=RECALL_PREFIX + recalled), *recent]


def _latest_user_text(messages: Sequence[ChatMessage]) -> str:
    return next((m.content or "" for m in reversed(messages) if m.role == MessageRole.USER), "")
