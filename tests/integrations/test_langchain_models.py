"""MemAgentLLM and ChatMemAgent read one memory, sync and async, whole and streamed."""

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.tools import tool

from langchain_memagent import ChatMemAgent, MemAgentLLM
from tests.integrations.heartbeat import loop_turns_during

# Generating this many tokens keeps a blocked event loop visibly idle.
LONG = 48


def test_llm_completes_and_streams_pieces(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=8)
    text = llm.invoke("Hello")
    pieces = list(llm.stream("Hello"))
    assert text and len(pieces) > 1
    assert "".join(pieces) == text


def test_llm_stop_sequence_ends_the_text_before_it(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=8)
    text = llm.invoke("Hello")
    stop = text.split()[0]
    assert llm.invoke("Hello", stop=[stop]) == text[: text.index(stop)]
    assert MemAgentLLM(**target.kwargs, max_tokens=8, stop=[stop]).invoke("Hello") == text[: text.index(stop)]


async def test_llm_async_paths_leave_the_event_loop_free(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=LONG)
    text, turns = await loop_turns_during(llm.ainvoke("Hello"))
    assert text == llm.invoke("Hello")
    assert turns > LONG
    pieces = [piece async for piece in llm.astream("Hello")]
    assert len(pieces) > 1 and "".join(pieces) == text


def test_llm_identifies_memory_and_model(target):
    params = MemAgentLLM(**target.kwargs, max_tokens=8)._identifying_params
    assert params["memory"] == target.memory and params["max_tokens"] == 8 and params["model_name"]


def test_chat_answers_and_streams_pieces(target):
    chat = ChatMemAgent(**target.kwargs, max_tokens=8)
    messages = [SystemMessage("Be brief."), HumanMessage("Hello"), AIMessage("Hi."), HumanMessage("Hello")]
    answer = chat.invoke(messages)
    chunks = list(chat.stream(messages))
    assert isinstance(answer, AIMessage) and answer.content
    assert all(isinstance(c, AIMessageChunk) for c in chunks) and len(chunks) > 2
    assert "".join(c.content for c in chunks) == answer.content
    assert chunks[-1].chunk_position == "last"
    assert answer.response_metadata["model_name"]


async def test_chat_async_paths_leave_the_event_loop_free(target):
    chat = ChatMemAgent(**target.kwargs, max_tokens=LONG)
    answer, turns = await loop_turns_during(chat.ainvoke("Hello"))
    assert answer.content == chat.invoke("Hello").content
    assert turns > LONG
    chunks = [c async for c in chat.astream("Hello")]
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == answer.content


def test_chat_writes_nothing_unless_asked(target):
    ChatMemAgent(**target.kwargs, max_tokens=4).invoke("Hello")
    assert target.written() == []


def test_chat_remembers_each_finished_turn_once(target):
    chat = ChatMemAgent(**target.kwargs, max_tokens=4, remember_turns=True)
    first = chat.invoke("My sister Mia lives in Lisbon.")
    history = [HumanMessage("My sister Mia lives in Lisbon."), first, HumanMessage("She is a pilot.")]
    second = "".join(c.content for c in chat.stream(history))
    assert target.written() == [
        f"User: My sister Mia lives in Lisbon.\nAssistant: {first.content}",
        f"User: She is a pilot.\nAssistant: {second}",
    ]
    if target.kind == "server":
        assert target.sources() == ["langchain:chat", "langchain:chat"]


async def test_chat_remembers_turns_on_the_async_path(target):
    chat = ChatMemAgent(**target.kwargs, max_tokens=4, remember_turns=True)
    answer = await chat.ainvoke("Hello")
    assert target.written() == [f"User: Hello\nAssistant: {answer.content}"]


def test_chat_declares_tool_calling_unsupported(target):
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    chat = ChatMemAgent(**target.kwargs)
    with pytest.raises(NotImplementedError, match="does not support tool calling"):
        chat.bind_tools([add])


async def test_chat_and_llm_report_usage_finish_reason_and_the_memory_read(target):
    chat = ChatMemAgent(**target.kwargs, max_tokens=3)
    message = chat.invoke("Hello")
    assert message.usage_metadata["output_tokens"] == 3 and message.usage_metadata["input_tokens"] > 0
    assert message.response_metadata["finish_reason"] == "length"
    assert (message.response_metadata["memory"], message.response_metadata["step"]) == (target.memory, target.step())
    streamed = [chunk async for chunk in chat.astream("Hello")]
    assert streamed[-1].usage_metadata == message.usage_metadata
    llm = MemAgentLLM(**target.kwargs, max_tokens=3)
    [[generation]] = llm.generate(["Hello"]).generations
    info = generation.generation_info
    assert (info["completion_tokens"], info["finish_reason"], info["memory"]) == (3, "length", target.memory)
    [[agenerated]] = (await llm.agenerate(["Hello"])).generations
    assert agenerated.generation_info == info and agenerated.text == generation.text
