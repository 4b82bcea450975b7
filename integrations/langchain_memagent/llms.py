"""LangChain LLM: text completion that attends to one memagent memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import GenerationChunk, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig

from langchain_memagent._model_fields import MemAgentModelFields
from memagent.integration.backend import usage_fields


class MemAgentLLM(MemAgentModelFields, BaseLLM):
    """Completion against one memory: the model continues the prompt and reads the memory as it goes.

    Each generation's `generation_info` (in `generate()`'s result, and on the last streamed
    chunk) holds finish_reason, prompt_tokens, completion_tokens, total_tokens, and the memory
    and pool step it read.

    Example:
        ```python
        import memagent
        from langchain_memagent import MemAgentLLM

        engine = memagent.load()  # or MemAgentLLM(memory="notes", server="127.0.0.1:50051", token=...)
        engine.pool("notes").inject("The spare key is under the blue flower pot by the back door.")
        llm = MemAgentLLM(memory="notes", engine=engine, max_tokens=24, stop=["\\n"])
        print(llm.invoke("Question: Where is the spare key?\\nAnswer:"))
        # without memory=, a call names its memory: config={"configurable": {"memory_id": "notes"}}
        for piece in llm.stream("The spare key is"):
            print(piece, end="", flush=True)
        ```
    """

    @property
    def _llm_type(self) -> str:
        return "memagent"

    # LangChain's LLM batches through `generate`, which sees no per-input config: batch through
    # `invoke` instead, so each input's config may name its own memory.
    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, **kwargs: Any):
        return Runnable.batch(self, inputs, config, **kwargs)

    async def abatch(
        self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, **kwargs: Any
    ):
        return await Runnable.abatch(self, inputs, config, **kwargs)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._memagent_identity()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        return self._memagent_ls_params("llm", stop, **kwargs)

    # Built on BaseLLM rather than LLM so each generation keeps the `generation_info` of its last
    # chunk: finish_reason, token counts, and the memory and pool step read.
    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return LLMResult(generations=[[_joined(self._stream(p, stop, run_manager, **kwargs))] for p in prompts])

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = [[_joined([c async for c in self._astream(p, stop, run_manager, **kwargs)])] for p in prompts]
        return LLMResult(generations=generations)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        backend = self._backend_for(kwargs)
        pieces = backend.generate(prompt, self._sampling(stop, **kwargs))
        for piece in pieces:
            if piece:
                chunk = GenerationChunk(text=piece)
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        yield GenerationChunk(text="", generation_info=usage_fields(pieces.usage, backend.memory))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        backend = self._backend_for(kwargs)
        pieces = await backend.agenerate(prompt, self._sampling(stop, **kwargs))
        async for piece in pieces:
            if piece:
                chunk = GenerationChunk(text=piece)
                if run_manager:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        yield GenerationChunk(text="", generation_info=usage_fields(pieces.usage, backend.memory))


def _joined(chunks: Iterable[GenerationChunk]) -> GenerationChunk:
    return sum(chunks, GenerationChunk(text=""))
