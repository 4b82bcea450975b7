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
from memagent.integration.recall import RecallMode, recalled, should_recall

RECALL_PREFIX = "Long-term memory, on the latest user message: "


def message_records(
    new: Sequence[ChatMessage],
    earlier: Sequence[ChatMessage],
    source: str,
    *,
    remember_assistant: bool = True,
    user: str | None = None,
) -> list[tuple[str, str, dict[str, str]]]:
    """Text, source label and log metadata for each new message worth writing: user and assistant
    text, and tool results with the name and arguments of the call (found in `earlier` or `new`)
    that produced them. System prompts are not written."""
    calls = {
        block.tool_call_id: block
        for message in [*earlier, *new]
        for block in message.blocks
        if isinstance(block, ToolCallBlock)
    }
    records = []
    for message in new:
        text = (message.content or "").strip()
        if not text:
            continue
        if message.role == MessageRole.USER:
            records.append((memory_records.user_message(text), f"{source}:user", memory_records.metadata(user=user)))
        elif message.role == MessageRole.ASSISTANT and remember_assistant:
            metadata = memory_records.metadata(user=user)
            records.append((memory_records.assistant_message(text), f"{source}:assistant", metadata))
        elif message.role == MessageRole.TOOL:
            call_id = message.additional_kwargs.get("tool_call_id")
            call = calls.get(call_id)
            name = call.tool_name if call else message.additional_kwargs.get("name", "tool")
            arguments = call.tool_kwargs if call else {}
            metadata = memory_records.metadata(tool=name, tool_call_id=call_id, user=user)
            records.append((memory_records.tool_result(name, arguments, text), f"{source}:tool:{name}", metadata))
    return records


def latest_user_text(messages: Sequence[ChatMessage]) -> str:
    return next((m.content or "" for m in reversed(messages) if m.role == MessageRole.USER), "")


class MemAgentMemory(MemoryConnection, BaseMemory):
    """Chat memory whose long-term store is a MemoryLLM memory.

    `put`, `put_messages` and `set` (and their async forms) write each new message into the
    memory: user and assistant text (`remember_assistant=False`: user text only, since a wrong
    answer written is later taken as true), and tool results with the name and arguments of the
    call that produced them (FunctionAgent puts those at the end of a run); log metadata say
    which tool and call. `get` returns the last `window` messages (starting at a user message)
    after a system message with the memory's answer to the latest user message, asked as
    `recall` says: "always", "questions" (only when the message is one) or "never" (no model
    call at all). `reset` empties the window and the memory.

    One FunctionAgent serves many users by taking one memory per user:
    `MemAgentMemory.from_defaults(session_id="alice", server=...)` reads and writes memory "alice".
    For LlamaIndex's block-based `Memory`, see `MemAgentMemoryBlock`.

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
    recall: RecallMode = Field(default="always", description="When get() asks the memory: always, questions, never.")
    grounded: bool = Field(
        default=False, description="Recall only answers a write supports, else \"I don't know.\" (memories of whole writes)."
    )
    remember_assistant: bool = Field(default=True, description="Write assistant messages too, not only the user's.")

    _messages: List[ChatMessage] = PrivateAttr(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "MemAgentMemory"

    @classmethod
    def from_defaults(cls, session_id: str | None = None, **kwargs: Any) -> "MemAgentMemory":
        """`session_id` names the memory (one per user or conversation) unless `memory=` does."""
        return cls(**({"memory": session_id} if session_id else {}) | kwargs)

    # -- writing -------------------------------------------------------------------------------

    def put(self, message: ChatMessage) -> None:
        self.put_messages([message])

    async def aput(self, message: ChatMessage) -> None:
        await self.aput_messages([message])

    def put_messages(self, messages: List[ChatMessage]) -> None:
        for record in self._records(messages):
            self.backend.write(*record)
        self._messages.extend(messages)

    async def aput_messages(self, messages: List[ChatMessage]) -> None:
        for record in self._records(messages):
            await self.backend.awrite(*record)
        self._messages.extend(messages)

    def set(self, messages: List[ChatMessage]) -> None:
        for record in self._records(self._unseen(messages), context=messages):
            self.backend.write(*record)
        self._messages = list(messages)

    async def aset(self, messages: List[ChatMessage]) -> None:
        for record in self._records(self._unseen(messages), context=messages):
            await self.backend.awrite(*record)
        self._messages = list(messages)

    # -- reading -------------------------------------------------------------------------------

    def get(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        recent = self._recent()
        question = input or latest_user_text(recent)
        answer = self.backend.ask(question, self.grounded) if should_recall(self.recall, question) else ""
        return self._with_recall(recent, recalled(answer))

    async def aget(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        recent = self._recent()
        question = input or latest_user_text(recent)
        answer = await self.backend.aask(question, self.grounded) if should_recall(self.recall, question) else ""
        return self._with_recall(recent, recalled(answer))

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

    def _records(self, new: Sequence[ChatMessage], context: Sequence[ChatMessage] = ()) -> list[tuple]:
        return message_records(
            new, [*self._messages, *context], self.source, remember_assistant=self.remember_assistant
        )

    def _recent(self) -> List[ChatMessage]:
        """The last `window` messages, from the first user message among them (so no tool result
        is cut from its call); the latest user message is always kept."""
        tail = max(0, len(self._messages) - self.window)
        users = [i for i, m in enumerate(self._messages) if m.role == MessageRole.USER]
        later = [i for i in users if i >= tail]
        start = later[0] if later else (users[-1] if users else tail)
        return self._messages[start:]

    @staticmethod
    def _with_recall(recent: List[ChatMessage], answer: str) -> List[ChatMessage]:
        if not answer:
            return recent
        return [ChatMessage(role=MessageRole.SYSTEM, content=RECALL_PREFIX + answer), *recent]
