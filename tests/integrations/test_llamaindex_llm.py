"""LlamaIndex MemAgentLLM: completion and chat against one memory, sync and truly async, whole and streamed."""

from llama_index.core.llms import ChatMessage

from llama_index.llms.memagent import MemAgentLLM
from tests.integrations.heartbeat import loop_turns_during

LONG = 48
MESSAGES = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hello")]


def test_metadata_describes_a_chat_model(target):
    metadata = MemAgentLLM(**target.kwargs, max_tokens=8).metadata
    assert metadata.is_chat_model and metadata.num_output == 8 and metadata.model_name


def test_complete_and_stream_complete_agree(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=8)
    text = llm.complete("Hello").text
    responses = list(llm.stream_complete("Hello"))
    assert text and len(responses) > 1
    assert "".join(r.delta for r in responses) == responses[-1].text == text


def test_chat_and_stream_chat_agree(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=8)
    answer = llm.chat(MESSAGES).message
    responses = list(llm.stream_chat(MESSAGES))
    assert answer.role == "assistant" and answer.content
    assert len(responses) > 1 and responses[-1].message.content == answer.content


def test_stop_ends_the_text_before_it(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=8)
    text = llm.complete("Hello").text
    stop = text.split()[0]
    assert llm.complete("Hello", stop=[stop]).text == text[: text.index(stop)]


async def test_async_paths_leave_the_event_loop_free(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=LONG)
    completion, turns = await loop_turns_during(llm.acomplete("Hello"))
    assert completion.text == llm.complete("Hello").text and turns > LONG
    answer, turns = await loop_turns_during(llm.achat(MESSAGES))
    assert answer.message.content == llm.chat(MESSAGES).message.content and turns > LONG
    pieces = [r.delta async for r in await llm.astream_complete("Hello")]
    assert len(pieces) > 1 and "".join(pieces) == completion.text
    chat_pieces = [r.delta async for r in await llm.astream_chat(MESSAGES)]
    assert len(chat_pieces) > 1 and "".join(chat_pieces) == answer.message.content


def _usage_is_that_of(additional: dict, text_tokens_at_most: int, memory: str) -> None:
    assert additional["finish_reason"] in ("stop", "length") and additional["memory"] == memory
    assert 0 < additional["completion_tokens"] <= text_tokens_at_most and additional["prompt_tokens"] > 0
    assert additional["total_tokens"] == additional["prompt_tokens"] + additional["completion_tokens"]


async def test_responses_carry_usage_and_the_memory_step_read(target):
    llm = MemAgentLLM(**target.kwargs, max_tokens=8)
    llm.backend.write("Kim's bike is blue.")
    completion = llm.complete("Hello")
    _usage_is_that_of(completion.additional_kwargs, 8, target.memory)
    assert completion.additional_kwargs["step"] == target.step() > 0
    assert list(llm.stream_complete("Hello"))[-1].additional_kwargs == completion.additional_kwargs
    chat = await llm.achat(MESSAGES)
    _usage_is_that_of(chat.additional_kwargs, 8, target.memory)
    streamed = [r async for r in await llm.astream_chat(MESSAGES)]
    assert streamed[-1].delta == "" and streamed[-1].additional_kwargs == chat.additional_kwargs
    assert llm.chat(MESSAGES).additional_kwargs == chat.additional_kwargs
