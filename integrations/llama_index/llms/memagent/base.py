"""LlamaIndex LLM: completion and chat with a model that reads one memagent memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from memagent.integration.backend import AsyncPieces, MemoryBackend, Pieces, chat_message, usage_fields
from memagent.integration.fields import MemoryConnection
from memagent.sampling import SamplingParams


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict]:
    """LlamaIndex messages as the role/content dicts `chat` takes."""
    return [chat_message(m.role.value, m.content or "") for m in messages]


class MemAgentLLM(MemoryConnection, CustomLLM):
    """Completion and chat against one memory, sync and async, whole or streamed.

    `complete` continues the prompt as written; `chat` puts the messages through the model's chat
    template. Either way the model attends to the memory: what was written into it is known
    without being in the prompt. Responses carry the usage in `additional_kwargs` (prompt_tokens,
    completion_tokens, total_tokens, finish_reason, and the memory and pool step read); a stream
    ends with one more response, its delta empty, that carries it. Built without `memory=`, one
    LLM serves many users: each call names its memory with the `memory_id=` keyword
    (e.g. `llm.chat(messages, memory_id="alice")`).

    Example:
        ```python
        import memagent
        from llama_index.core.llms import ChatMessage
        from llama_index.llms.memagent import MemAgentLLM

        engine = memagent.load()  # or MemAgentLLM(memory="notes", server="127.0.0.1:50051", token=...)
        engine.pool("notes").inject("The spare key is under the blue flower pot by the back door.")
        llm = MemAgentLLM(memory="notes", engine=engine, max_tokens=32)
        print(llm.chat([ChatMessage(role="user", content="Where is the spare key?")]).message.content)
        for response in llm.stream_complete("The spare key is"):
            print(response.delta, end="", flush=True)
        ```
    """

    max_tokens: int = Field(default=256, description="Most tokens to generate.")
    temperature: float = Field(default=0.0, description="Sampling temperature; 0 decodes greedily.")
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, description="Tokens the prompt may take.")

    @classmethod
    def class_name(cls) -> str:
        return "MemAgentLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_tokens,
            is_chat_model=True,
            model_name=self.backend.model_name,
        )

    def _options(self, kwargs: dict[str, Any]) -> SamplingParams:
        return SamplingParams.from_framework(
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            stop=kwargs.get("stop"),
        )

    def _backend_for(self, kwargs: dict[str, Any]) -> MemoryBackend:
        """The backend of the memory this call names (`memory_id=`), else of `memory=`."""
        memory = kwargs.get("memory_id")
        return self.backend.using(memory) if memory else self.backend

    def _prompt(self, prompt: str, formatted: bool) -> str:
        return prompt if formatted else self.completion_to_prompt(prompt)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        backend = self._backend_for(kwargs)
        pieces = backend.generate(self._prompt(prompt, formatted), self._options(kwargs))
        text = "".join(pieces)
        return CompletionResponse(text=text, additional_kwargs=usage_fields(pieces.usage, backend.memory))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        backend = self._backend_for(kwargs)
        return _completions(backend.generate(self._prompt(prompt, formatted), self._options(kwargs)), backend.memory)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        backend = self._backend_for(kwargs)
        pieces = backend.chat(message_dicts(messages), self._options(kwargs))
        text = "".join(pieces)
        return _as_chat(CompletionResponse(text=text, additional_kwargs=usage_fields(pieces.usage, backend.memory)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        backend = self._backend_for(kwargs)
        pieces = backend.chat(message_dicts(messages), self._options(kwargs))
        return (_as_chat(response) for response in _completions(pieces, backend.memory))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        backend = self._backend_for(kwargs)
        pieces = await backend.agenerate(self._prompt(prompt, formatted), self._options(kwargs))
        text = "".join([piece async for piece in pieces])
        return CompletionResponse(text=text, additional_kwargs=usage_fields(pieces.usage, backend.memory))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        backend = self._backend_for(kwargs)
        pieces = await backend.agenerate(self._prompt(prompt, formatted), self._options(kwargs))
        return _acompletions(pieces, backend.memory)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        backend = self._backend_for(kwargs)
        pieces = await backend.achat(message_dicts(messages), self._options(kwargs))
        text = "".join([piece async for piece in pieces])
        return _as_chat(CompletionResponse(text=text, additional_kwargs=usage_fields(pieces.usage, backend.memory)))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        backend = self._backend_for(kwargs)
        pieces = await backend.achat(message_dicts(messages), self._options(kwargs))
        return _achat_responses(_acompletions(pieces, backend.memory))


# Streams end with one more response, its delta empty, whose additional_kwargs hold the usage.


def _completions(pieces: Pieces, memory: str | None) -> CompletionResponseGen:
    text = ""
    for piece in filter(None, pieces):
        text += piece
        yield CompletionResponse(text=text, delta=piece)
    yield CompletionResponse(text=text, delta="", additional_kwargs=usage_fields(pieces.usage, memory))


async def _acompletions(pieces: AsyncPieces, memory: str | None) -> CompletionResponseAsyncGen:
    text = ""
    async for piece in pieces:
        if piece:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
    yield CompletionResponse(text=text, delta="", additional_kwargs=usage_fields(pieces.usage, memory))


def _as_chat(response: CompletionResponse) -> ChatResponse:
    message = ChatMessage(role=MessageRole.ASSISTANT, content=response.text)
    return ChatResponse(message=message, delta=response.delta, additional_kwargs=response.additional_kwargs)


async def _achat_responses(responses: CompletionResponseAsyncGen) -> ChatResponseAsyncGen:
    async for response in responses:
        yield _as_chat(response)
