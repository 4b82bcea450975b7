"""Which memory a run reads and writes, so one agent object serves many users.

A run names its memory, first found first: a `memory_id` keyword of the call, the `memory_id`
of the LangGraph runtime context (`create_agent(..., context_schema=...)`, then
`agent.invoke(..., context={"memory_id": ...})`), `config["configurable"]["memory_id"]`, or,
for callbacks of a top-level run (LangChain shows them no configurable), the run's
`config["metadata"]["memory_id"]`. A run that names none uses the adapter's own `memory=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config
from langgraph.runtime import get_runtime

MEMORY_ID = "memory_id"


def chosen_memory(
    config: RunnableConfig | None = None, *, context: Any = None, metadata: Mapping[str, Any] | None = None
) -> str | None:
    """The memory id the current run names, or None. `config` defaults to the run's own (LangChain
    keeps it in a context variable); `context` to the LangGraph runtime's, inside a graph."""
    configurable = ensure_config(config).get("configurable") or {}
    if context is None:
        context = _graph_context()
    return _field(context) or configurable.get(MEMORY_ID) or (metadata or {}).get(MEMORY_ID) or None


def _field(context: Any) -> str | None:
    """`memory_id` of a runtime context: a dataclass, a pydantic model or a dict."""
    return context.get(MEMORY_ID) if isinstance(context, Mapping) else getattr(context, MEMORY_ID, None)


def _graph_context() -> Any:
    try:
        runtime = get_runtime()
    except RuntimeError:  # not inside a runnable
        return None
    return runtime.context if runtime is not None else None  # None: a runnable outside a graph
