"""How agent events read once written into a memory.

A memory holds no structure besides the text, so each record carries its own context, in the
shapes the embedded default model was trained to remember (memagent.train.corpus): a tool
result is one JSON line with the tool's name, its arguments and its result; a conversation
message is a "User: ..." or "Assistant: ..." line. What the text does not say (which run, which
call, whose) goes beside it as metadata: a server keeps it in the memory's log with the text.
"""

from __future__ import annotations

import json
from typing import Any


def tool_result(name: str, arguments: Any, output: Any) -> str:
    """`{"tool": name, <arguments>, <output fields, or "output": output>}` on one line."""
    record: dict[str, Any] = {"tool": name}
    record.update(arguments if isinstance(arguments, dict) else {"input": arguments} if arguments else {})
    fields = _json_object(output)
    record.update(fields if fields is not None else {"output": output})
    return json.dumps(record, ensure_ascii=False, default=str)


def metadata(**fields: Any) -> dict[str, str]:
    """Log metadata from the fields that are known: tool, tool_call_id, run_id, thread_id, user."""
    return {name: str(value) for name, value in fields.items() if value is not None and value != ""}


def user_message(text: str) -> str:
    return f"User: {text}"


def assistant_message(text: str) -> str:
    return f"Assistant: {text}"


def turn(user: str, assistant: str) -> str:
    return f"{user_message(user)}\n{assistant_message(assistant)}"


def store_item(key: str, value: dict[str, Any]) -> str:
    """A LangGraph store item: `{"key": key, <value fields>}` on one line."""
    return json.dumps({"key": key} | value, ensure_ascii=False, default=str)


def _json_object(value: Any) -> dict | None:
    """`value` as a dict when it is one, or a string holding a JSON object."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None
