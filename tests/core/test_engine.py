"""The text-level API: receipts, chunking, the short-write policy, streaming, named pools."""

import pytest
import torch

from memagent.engine import Chunking


def test_write_returns_a_receipt(tiny_engine):
    pool = tiny_engine.pool("receipt")
    pool.reset()
    receipt = pool.inject("Alice's favourite colour is teal and she lives in Lisbon with two cats.")
    assert receipt.chunks == 1 and receipt.step == 1 and receipt.ms > 0
    assert receipt.tokens == len(tiny_engine.encode("Alice's favourite colour is teal and she lives in Lisbon with two cats."))


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
