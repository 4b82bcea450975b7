"""The text-level API: receipts, chunking, the short-write policy, streaming, named pools."""

import pytest
import torch

from memagent.engine import Chunking, Engine
from memagent.model import generation
from memagent.sampling import ASK_DEFAULTS, SamplingParams, Usage


def test_write_returns_a_receipt(tiny_engine):
    pool = tiny_engine.pool("receipt")
    pool.reset()
    receipt = pool.inject("Alice's favourite colour is teal and she lives in Lisbon with two cats.")
    assert receipt.chunks == 1 and receipt.step == 1 and receipt.ms > 0
    assert receipt.tokens == len(tiny_engine.encode("Alice's favourite colour is teal and she lives in Lisbon with two cats."))


def test_a_write_leaves_what_reads_attend_up_to_date(tiny_engine):
    never_read, read = tiny_engine.pool("refresh-never-read"), tiny_engine.pool("refresh-read")
    for pool in (never_read, read):
        pool.inject("Ann's dog is called Rex and sleeps in the hall.")
    read.generate("Ann's dog", max_new_tokens=1)
    read.inject("Ben's cat is called Tom and sleeps on the stairs.")
    never_read.inject("Ben's cat is called Tom and sleeps on the stairs.")
    assert read.pool.prefix_kv.version == read.pool.version  # the next read starts at once
    assert never_read.pool.prefix_kv is None  # nothing was spent on a memory nobody reads
    fresh = [t.clone() for t in read.pool.prefix_kv.keys]
    read.pool.prefix_kv = None
    torch.testing.assert_close(tiny_engine.model.memory_prefix(read.pool).keys, fresh)


def test_a_write_succeeds_when_updating_what_reads_attend_runs_out_of_memory(tiny_engine, monkeypatch):
    pool = tiny_engine.pool("refresh-out-of-memory")
    pool.inject("Ann's dog is called Rex and sleeps in the hall.")
    pool.generate("Ann's dog", max_new_tokens=1)

    def out_of_memory(_pool):
        raise torch.OutOfMemoryError("no room")

    with monkeypatch.context() as patched:
        patched.setattr(tiny_engine.model, "memory_prefix", out_of_memory)
        receipt = pool.inject("Ben's cat is called Tom and sleeps on the stairs.")
    assert receipt.step == pool.step and pool.pool.prefix_kv.version != pool.pool.version  # left to the read
    pool.generate("Ann's dog", max_new_tokens=1)
    assert pool.pool.prefix_kv.version == pool.pool.version


def test_long_text_is_written_in_chunks(tiny_engine):
    pool = tiny_engine.pool("long")
    text = " ".join(f"fact number {i} is {i * i}." for i in range(300))
    receipt = pool.inject(text, progress=False)
    chunk = tiny_engine.chunking.max_chunk_tokens
    assert receipt.chunks == -(-receipt.tokens // chunk) > 1
    assert pool.step == receipt.chunks


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_rejected_and_the_pool_kept(tiny_engine, text):
    pool = tiny_engine.pool("empty")
    pool.reset()
    pool.inject("something worth keeping in memory for later")
    before = pool.pool.memory.clone()
    with pytest.raises(ValueError, match="empty"):
        pool.inject(text)
    assert torch.equal(pool.pool.memory, before) and pool.step == 1


def test_short_writes_are_repeated_to_the_minimum_length():
    chunking = Chunking(max_chunk_tokens=8, min_write_tokens=5, repeat_short=True)
    assert chunking.chunks([1, 2]) == [[1, 2, 1, 2, 1, 2]]
    assert chunking.chunks(list(range(10))) == [list(range(8)), [8, 9, 8, 9, 8, 9]]
    assert Chunking(max_chunk_tokens=8, repeat_short=False).chunks([1, 2]) == [[1, 2]]


def test_pools_are_separate(tiny_engine):
    a, b = tiny_engine.pool("a"), tiny_engine.pool("b")
    a.reset(), b.reset()
    a.inject("Only pool a hears about the secret password swordfish.")
    assert a.step == 1 and b.step == 0 and not b.pool.initialized
    assert tiny_engine.pool("a") is a


def test_streamed_pieces_join_to_the_full_text(tiny_engine):
    pool = tiny_engine.pool("stream")
    pool.inject("The meeting with Bob moved to Thursday at noon.")
    options = dict(max_new_tokens=12, do_sample=True, seed=11)
    pieces = list(pool.generate("The meeting is on", stream=True, **options))
    assert len(pieces) > 1
    assert "".join(pieces) == pool.generate("The meeting is on", **options)


def test_batch_generation_matches_single_prompts(tiny_engine):
    pool = tiny_engine.pool("batch")
    pool.inject("Project Falcon ships in March; its lead is Dana.")
    prompts = ["Who leads Project Falcon?", "When", "Tell me everything you know about the project"]
    options = dict(max_new_tokens=6)
    batch = pool.generate_batch(prompts, **options)
    assert batch == [pool.generate(p, **options) for p in prompts]


def test_stop_strings_cut_the_text(tiny_engine):
    pool = tiny_engine.pool("stop")
    free = pool.generate("Once upon a time", max_new_tokens=16, do_sample=True, seed=2)
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    assert stop, "need some generated text to pick a stop string from"
    cut = pool.generate("Once upon a time", max_new_tokens=16, do_sample=True, seed=2, stop=[stop])
    assert cut == free[: free.index(stop)]


def test_saved_pool_loads_into_another_name(tiny_engine, tmp_path):
    pool = tiny_engine.pool("saved")
    pool.inject("The staging database lives on host db-7.")
    pool.save(tmp_path / "saved.safetensors")
    copy = tiny_engine.pool("copy")
    copy.load(tmp_path / "saved.safetensors")
    assert torch.equal(copy.pool.memory, pool.pool.memory) and copy.step == pool.step
    assert copy.generate("Where", max_new_tokens=5) == pool.generate("Where", max_new_tokens=5)


# -- how a generation ended ------------------------------------------------------------------


def _greedy_ids(engine, pool, prompts, n):
    """The greedy continuation of each prompt, as token ids (no end-of-sequence token)."""
    encoded = engine.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    params = SamplingParams(max_new_tokens=n)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    steps = generation.stream(engine.model, ids, params, (), mask, pool.pool)
    return torch.stack(list(steps), dim=1).tolist()


def _engine_ending_at(engine, eos: int) -> Engine:
    """The same model and tokenizer with `eos` as its only end-of-sequence token."""
    other = Engine(engine.model, engine.tokenizer)
    other.eos_token_ids = [eos]
    return other


def test_usage_says_the_length_limit_ended_it(tiny_engine):
    pool = tiny_engine.pool("usage-length")
    generation = pool.generate("The meeting is on", stream=True, max_new_tokens=5)
    assert generation.usage is None
    text = "".join(generation)
    prompt_tokens = len(tiny_engine.encode("The meeting is on"))
    assert generation.usage == Usage(prompt_tokens, 5, "length", pool.step)
    assert text == pool.generate("The meeting is on", max_new_tokens=5)


def test_usage_says_an_end_token_ended_it(tiny_engine):
    pool = tiny_engine.pool("usage-eos")
    ids = _greedy_ids(tiny_engine, pool, ["Once upon a time"], 6)[0]
    eos = ids[2]
    ending = _engine_ending_at(tiny_engine, eos)
    generation = ending.generate(pool.pool, "Once upon a time", max_new_tokens=6)
    text = "".join(generation)
    assert generation.usage.finish_reason == "stop"
    assert generation.usage.completion_tokens == ids.index(eos) + 1  # the end token counts
    assert text == tiny_engine.tokenizer.decode(ids[: ids.index(eos)], skip_special_tokens=True)


def test_usage_says_a_stop_string_ended_it(tiny_engine):
    pool = tiny_engine.pool("usage-stop")
    free = pool.generate("Once upon a time", max_new_tokens=16, do_sample=True, seed=2)
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    generation = pool.generate("Once upon a time", max_new_tokens=16, do_sample=True, seed=2, stop=[stop], stream=True)
    assert "".join(generation) == free[: free.index(stop)]
    assert generation.usage.finish_reason == "stop" and 1 <= generation.usage.completion_tokens < 16


def test_usage_says_a_generation_closed_early_was_cancelled(tiny_engine):
    pool = tiny_engine.pool("usage-closed")
    generation = pool.chat([{"role": "user", "content": "Hi"}], stream=True, max_new_tokens=8)
    next(generation), next(generation)
    assert generation.usage is None
    generation.close()
    assert generation.usage.finish_reason == "cancelled" and generation.usage.completion_tokens == 2


def test_every_row_of_a_batch_has_its_own_usage(tiny_engine):
    pool = tiny_engine.pool("usage-batch")
    prompts = ["Who leads Project Falcon?", "Tell me everything you know about the project"]
    first, second = _greedy_ids(tiny_engine, pool, prompts, 6)
    eos = next(t for t in first if t not in second)
    batch = _engine_ending_at(tiny_engine, eos).stream(pool.pool, prompts, SamplingParams(max_new_tokens=6))
    assert batch.usages is None
    list(batch)
    prompt_tokens = [len(tiny_engine.encode(p)) for p in prompts]
    assert batch.usages == [
        Usage(prompt_tokens[0], first.index(eos) + 1, "stop", pool.step),
        Usage(prompt_tokens[1], 6, "length", pool.step),
    ]


def test_a_sampling_params_object_and_keywords_combine(tiny_engine):
    pool = tiny_engine.pool("params")
    params = SamplingParams(max_new_tokens=7, do_sample=True, seed=3)
    assert pool.generate("Hello", params) == pool.generate("Hello", max_new_tokens=7, do_sample=True, seed=3)
    short = pool.generate("Hello", params, max_new_tokens=2, stream=True)
    "".join(short)
    assert short.usage.completion_tokens == 2
    with pytest.raises(TypeError, match="unknown sampling options"):
        pool.generate("Hello", max_tokens=3)


def test_a_write_plan_is_what_a_write_does(tiny_engine):
    text = " ".join(f"fact number {i} is {i * i}." for i in range(100))
    plan = tiny_engine.plan_write(text)
    assert len(plan.chunks) > 1
    assert plan.tokens == len(tiny_engine.encode(text))
    assert plan.chunks == tiny_engine.chunking.chunks(tiny_engine.encode(text))
    planned, written = tiny_engine.new_pool(), tiny_engine.new_pool()
    tiny_engine.apply(planned, plan.chunks)
    receipt = tiny_engine.write(written, text, progress=False)
    assert (receipt.tokens, receipt.chunks) == (plan.tokens, len(plan.chunks))
    assert torch.equal(planned.memory, written.memory) and planned.step == written.step
    with pytest.raises(ValueError, match="empty"):
        tiny_engine.plan_write(" \n")


def test_ask_defaults_live_in_one_place(tiny_engine):
    assert SamplingParams.for_ask() == ASK_DEFAULTS == SamplingParams(max_new_tokens=32, stop=("\n",))
    assert SamplingParams.for_ask(max_new_tokens=5) == SamplingParams(max_new_tokens=5, stop=("\n",))
    assert SamplingParams.for_ask(stop=["."]).stop == (".",)
    assert SamplingParams.for_ask(SamplingParams(max_new_tokens=7)) == SamplingParams(max_new_tokens=7, stop=("\n",))
    pool = tiny_engine.pool("ask-defaults")
    question = "What is the dog called?"
    expected = pool.generate(tiny_engine.question_prompt(question), ASK_DEFAULTS).strip()
    assert pool.ask(question) == expected


def test_a_generation_reserves_its_cache_and_a_full_budget_refuses_the_next(tiny_engine):
    from memagent.engine import CacheBudget, CacheBudgetExceeded

    pool = tiny_engine.pool("budget").pool
    one = tiny_engine.model.cache_nbytes(pool, 1, len(tiny_engine.encode("Hello")) + 4)
    assert one == tiny_engine.model.new_cache(pool, 1, len(tiny_engine.encode("Hello")) + 4).nbytes
    saved, tiny_engine.cache_budget = tiny_engine.cache_budget, CacheBudget(one)
    try:
        first = tiny_engine.generate(pool, "Hello", max_new_tokens=4)
        next(first)  # running: its cache is reserved
        assert tiny_engine.cache_budget.live == one
        with pytest.raises(CacheBudgetExceeded, match="does not fit"):
            next(iter(tiny_engine.generate(pool, "Hello", max_new_tokens=4)))
        first.close()
        assert tiny_engine.cache_budget.live == 0
        again = tiny_engine.generate(pool, "Hello", max_new_tokens=4)
        "".join(again)  # fits again
        assert again.usage.finish_reason in ("stop", "length") and tiny_engine.cache_budget.live == 0
    finally:
        tiny_engine.cache_budget = saved
