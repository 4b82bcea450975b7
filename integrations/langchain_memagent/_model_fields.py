"""What `MemAgentLLM` and `ChatMemAgent` share: the memory they read, and how they sample."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.language_models.base import LangSmithParams
from langchain_core.runnables import RunnableConfig

from langchain_memagent.memory_choice import MEMORY_ID, chosen_memory
from memagent.integration.backend import MemoryBackend
from memagent.integration.fields import MemoryConnection
from memagent.sampling import SamplingParams


class MemAgentModelFields(MemoryConnection):
    """One memory to read (see `MemoryConnection`; a call may name another, see
    `langchain_memagent.memory_choice`) and how to sample."""

    max_tokens: int | None = 256
    """Most tokens to generate."""
    temperature: float | None = None
    """Sampling temperature; 0 or None decodes greedily."""
    stop: list[str] | None = None
    """Generation ends before any of these strings."""
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    # The public entry points read the run's config; `_generate` and `_stream` see only keywords,
    # so the memory the run names travels to them as the `memory_id` keyword.
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return super().invoke(input, config, **self._naming_memory(config, kwargs))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await super().ainvoke(input, config, **self._naming_memory(config, kwargs))

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any):
        return super().stream(input, config, **self._naming_memory(config, kwargs))

    def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any):
        return super().astream(input, config, **self._naming_memory(config, kwargs))

    @staticmethod
    def _naming_memory(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        if MEMORY_ID in kwargs or not (memory := chosen_memory(config)):
            return kwargs
        return kwargs | {MEMORY_ID: memory}

    def _backend_for(self, kwargs: dict[str, Any]) -> MemoryBackend:
        """The backend of the memory this call names, else of `memory=`."""
        memory = kwargs.get(MEMORY_ID)
        return self.backend.using(memory) if memory else self.backend

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    def _sampling(self, stop: list[str] | None, **kwargs: Any) -> SamplingParams:
        """This model's sampling options, overridden by those of one call."""
        fields = ("max_tokens", "temperature", "top_p", "top_k", "seed")
        params = {name: kwargs.get(name, getattr(self, name)) for name in fields}
        return SamplingParams.from_framework(stop=stop if stop is not None else self.stop, **params)

    def _memagent_ls_params(self, model_type: Literal["chat", "llm"], stop: list[str] | None, **kwargs: Any):
        params = LangSmithParams(
            ls_provider="memagent",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type=model_type,
            ls_temperature=self.temperature,
            ls_max_tokens=self.max_tokens,
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _memagent_identity(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "memory": self.memory,
            "server": self.server,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
        }
