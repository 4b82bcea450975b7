"""Stand-ins for the one role that cannot run here: an agent's tool-calling model.

They replay a fixed script (call a tool, then answer); everything else in these tests is real.
"""

from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedToolCallingModel(GenericFakeChatModel):
    """Replies with the scripted messages in turn; accepts tools like a tool-calling model."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "ScriptedToolCallingModel":
        return self


def weather_agent_model(city: str = "Oslo", answer: str = "It is raining in Oslo.") -> ScriptedToolCallingModel:
    call = {"name": "get_weather", "args": {"city": city}, "id": "call_1", "type": "tool_call"}
    return ScriptedToolCallingModel(messages=iter([AIMessage("", tool_calls=[call]), AIMessage(answer)]))


class CityWeatherModel(BaseChatModel):
    """Calls get_weather for the city the user names last in their message, then answers with the
    tool's output. It keeps no script, so concurrent runs of one agent cannot share state here."""

    @property
    def _llm_type(self) -> str:
        return "city-weather"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "CityWeatherModel":
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any):
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(f"Noted: {last.content}")
        else:
            city = str(last.text).rstrip("?.!").split()[-1]
            call = {"name": "get_weather", "args": {"city": city}, "id": f"call_{city}", "type": "tool_call"}
            reply = AIMessage("", tool_calls=[call])
        return ChatResult(generations=[ChatGeneration(message=reply)])
