"""What `MemAgentLLM` and `ChatMemAgent` share: the memory they read, and how they sample."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.language_models.base import LangSmithParams

from memagent.integration.backend import sampling_options
from memagent.integration.fields import MemoryConnection


class MemAgentModelFields(MemoryConnection):
    """One memory to read (see `MemoryConnection`) and how to sample."""

    max_tokens: int | None = 256
    """Most tokens to generate."""
    temperature: float | None = None
    """Sampling temperature; 0 or None decodes greedily."""
    stop: list[str] | None = None
    """Generation ends before any of these strings."""
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    def _sampling(self, stop: list[str] | None, **kwargs: Any) -> dict:
        """This model's sampling options, overridden by those of one call."""
        fields = ("max_tokens", "temperature", "top_p", "top_k", "seed")
        params = {name: kwargs.get(name, getattr(self, name)) for name in fields}
        return sampling_options(stop=stop if stop is not None else self.stop, **params)

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
