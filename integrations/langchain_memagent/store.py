"""LangGraph store backed by memagent: long-term memory for `create_agent(..., store=...)` and for
tools that call `runtime.store.put/get/search`."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from memagent.abstention import is_abstention
from memagent.integration import records as memory_records
from memagent.integration.backend import ClosesBackend, LoggedText, MemoryBackend, connect

if TYPE_CHECKING:
    from memagent.engine import Engine

SEPARATOR = "."
_LABEL = re.compile(r"[A-Za-z0-9_-]+")
_KEY, _VALUE = "langgraph.key", "langgraph.value"
_CREATED, _UPDATED = "langgraph.created_at", "langgraph.updated_at"


def memory_id(namespace: tuple[str, ...]) -> str:
    """("users", "alice") -> "users.alice": the labels joined with ".". Labels are letters, digits,
    "_" and "-" (a "." would make the mapping ambiguous); the first starts with a letter or digit."""
    if not namespace or not all(isinstance(label, str) and _LABEL.fullmatch(label) for label in namespace):
        raise InvalidNamespaceError(
            f"namespace {namespace!r}: use labels of letters, digits, '_' and '-' (no '.')"
        )
    if not namespace[0][0].isalnum() or len(SEPARATOR.join(namespace)) > 128:
        raise InvalidNamespaceError(
            f"namespace {namespace!r}: must start with a letter or digit, 128 characters at most"
        )
    return SEPARATOR.join(namespace)


def namespace_of(memory: str) -> tuple[str, ...]:
    return tuple(memory.split(SEPARATOR))


class MemAgentStore(ClosesBackend, BaseStore):
    """A `langgraph.store.base.BaseStore` whose namespaces are memagent memories.

    - A namespace is a memory: `("users", "alice")` is memory `"users.alice"` (see `memory_id`).
    - `put(namespace, key, value)` writes the value into the memory, as one JSON line with its
      key (so the model learns it), and keeps the exact value, key and times as log metadata.
      Putting an existing key writes the new value, then forgets the old entry (the memory is
      rebuilt from the rest of its log); a value of None deletes.
    - `get` and `search` without a query are exact: they read the memory's log, never the model.
    - `delete` forgets the key's entries: the memory is rebuilt without them.
    - `search(prefix, query=...)` answers from memory: one `SearchItem` per memory under the
      prefix, key "recall", value `{"query": ..., "answer": <what the memory answers>,
      "abstained": <True when the answer is "I don't know.">}`; with `grounded=True` the answer
      is "I don't know." also where no write supports it (`memagent.Engine.grounding`).
    - `list_namespaces` lists the memories (of the token's tenant, on a server).

    What cannot apply, and why: there is no vector index (`index=` on put and the `score` of
    search results): a memory is read by the model, not by embedding similarity, so a query is
    answered, not ranked, and `filter` goes with exact (query-less) search only, as equality on
    value fields. No TTL (`supports_ttl` is False): a memory forgets only when told. The
    langgraph packages ship no store conformance suite (langchain-tests' `BaseStore` suite is for
    `langchain_core.stores`, a different interface), so tests/integrations/test_langchain_store.py
    checks the `BaseStore` contract itself, on a server and an engine.
    On an in-process engine the log is the one the backend keeps in this process (an engine has
    none): it holds what was written through memagent's adapters, and is lost when the process ends.
    The async methods run the blocking calls in a worker thread.

    Example:
        ```python
        import memagent
        from langchain_memagent import MemAgentStore

        store = MemAgentStore(engine=memagent.load())  # or server=..., token=...
        store.put(("users", "alice"), "food", {"likes": "spicy ramen"})
        print(store.get(("users", "alice"), "food").value)
        print(store.search(("users",), query="What food does the user like?")[0].value["answer"])
        ```
    """

    supports_ttl = False

    def __init__(
        self,
        *,
        server: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        engine: Engine | None = None,
        source: str = "langgraph:store",
        grounded: bool = False,
    ):
        self.backend = connect(server=server, token=token, timeout=timeout, engine=engine)
        self.source = source
        self.grounded = grounded  # a query's answer only where a write supports it (`Engine.grounding`)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return [self._run(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    def _run(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            return self._get(op.namespace, op.key)
        if isinstance(op, PutOp):
            self._put(op.namespace, op.key, op.value)
            return None
        if isinstance(op, SearchOp):
            return self._search(op)
        if isinstance(op, ListNamespacesOp):
            return self._list_namespaces(op)
        raise TypeError(f"unknown store operation {type(op).__name__}")

    # -- exact: the memory's log -------------------------------------------------------------

    def _memory(self, namespace: tuple[str, ...]) -> MemoryBackend:
        return self.backend.using(memory_id(namespace))

    def _entries(self, namespace: tuple[str, ...], key: str | None = None) -> list[LoggedText]:
        """The log entries that hold store items (of `key`), oldest first; none for a new memory."""
        if memory_id(namespace) not in self._memory_ids():
            return []
        entries = [e for e in self._memory(namespace).entries() if _KEY in e.metadata]
        return [e for e in entries if key is None or e.metadata[_KEY] == key]

    def _get(self, namespace: tuple[str, ...], key: str) -> Item | None:
        entries = self._entries(namespace, key)
        return _item(namespace, entries[-1]) if entries else None

    def _put(self, namespace: tuple[str, ...], key: str, value: dict[str, Any] | None) -> None:
        old = self._entries(namespace, key)
        memory = self._memory(namespace)
        if value is not None:
            now = datetime.now(UTC).isoformat()
            created = old[-1].metadata.get(_CREATED, now) if old else now
            metadata = {_KEY: key, _VALUE: json.dumps(value, default=str), _CREATED: created, _UPDATED: now}
            memory.write(memory_records.store_item(key, value), self.source, metadata)
        if old:  # after the new value is in: a failed write loses nothing
            memory.forget([e.entry_id for e in old])

    def _memory_ids(self) -> list[str]:
        return self.backend.memory_ids()

    def _namespaces(self, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        spaces = sorted(namespace_of(m) for m in self._memory_ids())
        return [ns for ns in spaces if ns[: len(prefix)] == tuple(prefix)]

    def _search(self, op: SearchOp) -> list[SearchItem]:
        if op.query:
            if op.filter:
                raise ValueError("a query is answered by the memory; filter goes with query-less search only")
            found = [self._recall(ns, op.query) for ns in self._namespaces(op.namespace_prefix)]
        else:
            found = [
                _item(ns, entry, SearchItem)
                for ns in self._namespaces(op.namespace_prefix)
                for entry in self._entries(ns)
            ]
            found = [item for item in found if _matches(item.value, op.filter or {})]
            found.sort(key=lambda item: item.updated_at, reverse=True)
        return found[op.offset : op.offset + op.limit]

    def _recall(self, namespace: tuple[str, ...], query: str) -> SearchItem:
        now = datetime.now(UTC)
        answer = self._memory(namespace).ask(query, self.grounded)
        value = {"query": query, "answer": answer, "abstained": is_abstention(answer)}
        return SearchItem(namespace, "recall", value, now, now, score=None)

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        spaces = [namespace_of(m) for m in self._memory_ids()]
        spaces = [ns for ns in spaces if all(_namespace_matches(ns, c) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            spaces = [ns[: op.max_depth] for ns in spaces]
        return sorted(set(spaces))[op.offset : op.offset + op.limit]


def _item(namespace: tuple[str, ...], entry: LoggedText, kind: type[Item] = Item) -> Item:
    return kind(
        value=json.loads(entry.metadata[_VALUE]),
        key=entry.metadata[_KEY],
        namespace=namespace,
        created_at=datetime.fromisoformat(entry.metadata[_CREATED]),
        updated_at=datetime.fromisoformat(entry.metadata[_UPDATED]),
    )


def _matches(value: dict[str, Any], conditions: dict[str, Any]) -> bool:
    for name, wanted in conditions.items():
        if isinstance(wanted, dict):
            raise ValueError(f"filter on {name!r}: only equality is supported, not operators like {sorted(wanted)}")
        if value.get(name) != wanted:
            return False
    return True


def _namespace_matches(namespace: tuple[str, ...], condition: MatchCondition) -> bool:
    path = tuple(condition.path)
    if len(path) > len(namespace):
        return False
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path) :]
    return all(want == "*" or want == got for want, got in zip(path, part))
