"""Stand-ins for the one role that cannot run here: an agent's tool-calling model.

They replay a fixed script (call a tool, then answer); everything else in these tests is real.
"""

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage


class ScriptedToolCallingModel(GenericFakeChatModel):
    """Replies with the scripted messages in turn; accepts tools like a tool-calling model."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "ScriptedToolCallingModel":
        return self


def weather_agent_model(city: str = "Oslo", answer: str = "It is raining in Oslo.") -> ScriptedToolCallingModel:
    call = {"name": "get_weather", "args": {"city": city}, "id": "call_1", "type": "tool_call"}
    return ScriptedToolCallingModel(messages=iter([AIMessage("", tool_calls=[call]), AIMessage(answer)]))
