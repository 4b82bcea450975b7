"""LlamaIndex memory block: a memagent memory inside LlamaIndex's block-based `Memory`."""

from __future__ import annotations

from typing import Any, List, Optional

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field
from llama_index.core.memory.memory import BaseMemoryBlock

from llama_index.memory.memagent.base import RECALL_PREFIX, latest_user_text, message_records
from memagent.integration.backend import MemoryBackend
from memagent.integration.fields import MemoryConnection
from memagent.integration.recall import RecallMode, recalled, should_recall


class MemAgentMemoryBlock(MemoryConnection, BaseMemoryBlock[str]):
    """A long-term memory block for `llama_index.core.memory.Memory` (LlamaIndex 0.14).

    What the `Memory` flushes out of its short-term window is written into the memagent memory
    (user and assistant text, tool results with their call; `remember_assistant=False`: the user's
    side only), with log metadata. On `aget` the block returns what the memory recalls for the
    latest user message, asked as `recall` says ("always", "questions", "never"; "never" makes no
    model call).

    Which memory: `memory=` when given, else the `Memory`'s `session_id`; so one block object,
    in one `Memory` per user, serves every user.

    Example:
        ```python
        import memagent
        from llama_index.core.llms import ChatMessage
        from llama_index.core.memory import Memory
        from llama_index.memory.memagent import MemAgentMemoryBlock

        block = MemAgentMemoryBlock(engine=memagent.load())  # or server=..., token=...
        memory = Memory.from_defaults(session_id="alice", memory_blocks=[block], token_limit=400,
                                      chat_history_token_ratio=0.1, token_flush_size=50)
        memory.put(ChatMessage(role="user", content="My flight leaves from gate B12."))
        print(memory.get(input="Which gate does my flight leave from?"))
        ```
    """

    name: str = Field(default="memagent", description="The block's name in the Memory's template.")
    source: str = Field(default="llamaindex:block", description="Source label of the records written.")
    recall: RecallMode = Field(default="always", description="When aget asks the memory: always, questions, never.")
    grounded: bool = Field(
        default=False, description="Recall only answers a write supports, else \"I don't know.\" (memories of whole writes)."
    )
    remember_assistant: bool = Field(default=True, description="Write assistant messages too, not only the user's.")

    def _backend_for(self, session_id: str | None) -> MemoryBackend:
        return self.backend.using(session_id) if session_id and not self.memory else self.backend

    async def _aget(self, messages: Optional[List[ChatMessage]] = None, **block_kwargs: Any) -> str:
        question = latest_user_text(messages or [])
        if not should_recall(self.recall, question):
            return ""
        answer = recalled(await self._backend_for(block_kwargs.get("session_id")).aask(question, self.grounded))
        return RECALL_PREFIX + answer if answer else ""

    async def _aput(self, messages: List[ChatMessage]) -> None:
        for message in messages:
            backend = self._backend_for(message.additional_kwargs.get("session_id"))
            user = backend.memory if backend is not self.backend else None
            records = message_records(
                [message], messages, self.source, remember_assistant=self.remember_assistant, user=user
            )
            for record in records:
                await backend.awrite(*record)
