"""LangChain chat model: a conversation with a model that reads one memagent memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal, NoReturn

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel, agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langchain_memagent._model_fields import MemAgentModelFields
from langchain_memagent.memory_choice import MEMORY_ID
from memagent.integration import records as memory_records
from memagent.integration.backend import MemoryBackend, chat_message, usage_fields


def message_dicts(messages: Sequence[BaseMessage]) -> list[dict]:
    """LangChain messages as the role/content dicts `chat` takes."""
    return [chat_message(getattr(m, "role", m.type), str(m.text)) for m in messages]


class ChatMemAgent(MemAgentModelFields, BaseChatModel):
    """Chat with a model that reads one memory, sync or async, whole or streamed.

    With `remember_turns=True` each finished turn (the latest human message and the answer) is
    written into the memory, so a long conversation needs only its latest turns in the prompt;
    `remember_turns="user"` writes the human side only (an answer may be wrong, and what is
    written is later taken as true). Each write carries the run id (and the memory the call
    named, as `user`) as log metadata.

    Built without `memory=`, one object serves many users: each call names its memory, e.g.
    `chat.invoke(messages, config={"configurable": {"memory_id": "alice"}})` (see
    `langchain_memagent.memory_choice`).

    The last chunk carries `usage_metadata` (prompt and completion tokens) and, in
    `response_metadata`, the `finish_reason` ("stop", "length", "cancelled"), the `memory` read
    and its pool `step`.

    MemoryLLM has no native tool calling: `bind_tools` raises; to give tools to an agent, use a
    tool-calling model with `MemAgentMiddleware`.

    Example:
        ```python
        import memagent
        from langchain_memagent import ChatMemAgent

        chat = ChatMemAgent(memory="alice", engine=memagent.load(), max_tokens=32, remember_turns=True)
        chat.invoke("My sister Mia lives in Lisbon and works as a pilot.")
        print(chat.invoke("Where does Mia live?").content)
        for chunk in chat.stream("What does Mia do?"):
            print(chunk.content, end="", flush=True)
        ```
    """

    remember_turns: bool | Literal["user"] = False
    """Write each finished human/AI turn into the memory; "user": the human message only."""
    source: str = "langchain:chat"
    """Source label of the turns written into the memory."""

    @property
    def _llm_type(self) -> str:
        return "memagent-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._memagent_identity()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        return self._memagent_ls_params("chat", stop, **kwargs)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            "ChatMemAgent does not support tool calling: MemoryLLM has no native tool calls. "
            "Run the agent on a tool-calling model and add MemAgentMiddleware (or "
            "MemAgentCallbackHandler) so tool outputs are written into the memory."
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        answer, backend = [], self._backend_for(kwargs)
        pieces = backend.chat(message_dicts(messages), self._sampling(stop, **kwargs))
        for piece in pieces:
            if piece:
                answer.append(piece)
                chunk = self._chunk(piece)
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        if record := self._turn_record(messages, "".join(answer)):
            backend.write(record, self.source, self._write_metadata(backend, run_manager, kwargs))
        yield self._last_chunk(usage_fields(pieces.usage, backend.memory))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        answer, backend = [], self._backend_for(kwargs)
        pieces = await backend.achat(message_dicts(messages), self._sampling(stop, **kwargs))
        async for piece in pieces:
            if piece:
                answer.append(piece)
                chunk = self._chunk(piece)
                if run_manager:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        if record := self._turn_record(messages, "".join(answer)):
            await backend.awrite(record, self.source, self._write_metadata(backend, run_manager, kwargs))
        yield self._last_chunk(usage_fields(pieces.usage, backend.memory))

    @staticmethod
    def _chunk(piece: str) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(content=piece))

    def _last_chunk(self, usage: dict) -> ChatGenerationChunk:
        """The closing chunk: token usage, finish reason, and the memory and pool step read."""
        metadata = {"model_name": self.model_name, "model_provider": "memagent"}
        metadata |= {k: usage[k] for k in ("finish_reason", "memory", "step") if k in usage}
        tokens = (
            UsageMetadata(
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
                total_tokens=usage["total_tokens"],
            )
            if usage
            else None
        )
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", chunk_position="last", response_metadata=metadata, usage_metadata=tokens)
        )

    def _turn_record(self, messages: Sequence[BaseMessage], answer: str) -> str | None:
        """The finished turn to write, when turns are remembered and there is a human message."""
        human = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        if not self.remember_turns or human is None:
            return None
        user = str(human.text)
        if answer and self.remember_turns != "user":
            return memory_records.turn(user, answer)
        return memory_records.user_message(user)

    @staticmethod
    def _write_metadata(backend: MemoryBackend, run_manager: Any, kwargs: dict[str, Any]) -> dict[str, str]:
        run_id = run_manager.run_id if run_manager else None
        return memory_records.metadata(run_id=run_id, user=backend.memory if MEMORY_ID in kwargs else None)
