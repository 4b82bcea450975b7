"""Continuous batching: requests on different memories decode in one batch, and each request's
tokens are the same as when it runs alone."""

import threading

import pytest
import torch

from memagent import MemoryLLM
from memagent.model import attention, decoding
from memagent.model.decoding import DecodeBatch, decode
from memagent.model.attention import PREFILL_QUERY_ROWS
from memagent.model.config import MemoryLLMConfig
from memagent.model.shapes import SHAPES
from memagent.sampling import SamplingParams
from tests.conftest import FIXTURES

GREEDY = SamplingParams(max_new_tokens=12)
SAMPLED = SamplingParams(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, seed=7)


@pytest.fixture(scope="module")
def model() -> MemoryLLM:
    """Tiny, with an output layer of its own: tied random embeddings only echo the last token."""
    return MemoryLLM.from_random(MemoryLLMConfig(**dict(SHAPES["tiny"], tie_word_embeddings=False, vocab_size=512)), seed=3)


def pools(model, n=3):
    """`n` memories written with different texts (and one left empty)."""
    made = [model.new_pool(seed=i) for i in range(n)]
    for i, pool in enumerate(made[1:], 1):
        for j in range(i + 1):
            model.inject(torch.arange(5 + 7 * i + j, 30 + 7 * i + j)[None], pool=pool)
    return made


def prompt(i: int, length: int = 6) -> torch.Tensor:
    return torch.arange(100 + 11 * i, 100 + 11 * i + length)[None] % 500


def alone(model, pool, ids, params) -> list[list[int]]:
    steps = decode(model, ids, params, (), None, pool)
    return torch.stack([t for t in steps if t is not None], 1).tolist()


def together(model, requests, *, join_after: dict[int, int] | None = None, **options) -> list[list[list[int]]]:
    """Run requests (pool, ids, params) in one batch, their readers taking turns; request i joins
    once request 0 has taken `join_after[i]` steps. `options` go to each `decode`."""
    batch = DecodeBatch(model, threading.RLock())
    join_after = join_after or {}
    streams = [None] * len(requests)
    tokens = [[] for _ in requests]
    step = 0
    while True:
        for i, (pool, ids, params) in enumerate(requests):
            if streams[i] is None and join_after.get(i, 0) <= step:
                streams[i] = decode(model, ids, params, (), None, pool, batch=batch, **options)
        live = [i for i, s in enumerate(streams) if s is not None]
        progressed = False
        for i in live:
            token = next(streams[i], "end")
            if isinstance(token, torch.Tensor):
                tokens[i].append(token)
                progressed = True
            elif token is None:
                progressed = True
        step += 1
        if not progressed and all(s is not None for s in streams):
            break
    return [torch.stack(t, 1).tolist() for t in tokens], batch


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_each_request_gets_the_tokens_it_gets_alone(model, params):
    memories = pools(model)
    requests = [(memories[i % 3], prompt(i), params) for i in range(5)]  # two memories read twice
    expected = [alone(model, *r) for r in requests]
    got, batch = together(model, requests)
    assert got == expected
    # One forward pass per step for all five (alone: 5 x 12); each arrival may add one while
    # the others are a token ahead.
    assert batch.steps <= params.max_new_tokens + len(requests) - 1


def test_requests_on_one_memory_attend_its_prefix_together(model, monkeypatch):
    memories = pools(model)
    caches = [model.new_cache(memories[i], 1, 8) for i in (1, 1, 2, 1)]  # three read memory 1
    with torch.inference_mode():
        for cache in caches:
            model.prefill(prompt(0), torch.ones_like(prompt(0)), cache)
        reads = []
        real = attention._prefix_attention
        monkeypatch.setattr(attention, "_prefix_attention", lambda q, *a: reads.append(q.shape[2]) or real(q, *a))
        model.decode_rows(torch.ones(4, 1, dtype=torch.long), caches)
    rep = model.config.num_attention_heads // model.config.num_key_value_heads
    assert reads == [3 * rep, rep] * model.config.num_hidden_layers  # one product per memory and layer


def test_requests_join_and_leave_between_steps(model):
    memories = pools(model)
    requests = [
        (memories[0], prompt(0), SamplingParams(max_new_tokens=10)),
        (memories[1], prompt(1, 9), SamplingParams(max_new_tokens=3)),  # leaves early
        (memories[2], torch.cat([prompt(2), prompt(3)]), SamplingParams(max_new_tokens=8)),  # two rows
        (memories[1], prompt(4), SAMPLED),
    ]
    expected = [alone(model, *r) for r in requests]
    got, _ = together(model, requests, join_after={2: 2, 3: 5})
    assert got == expected


def test_a_closed_request_leaves_and_the_others_go_on_unchanged(model):
    memories = pools(model)
    requests = [(memories[i], prompt(i), GREEDY) for i in range(3)]
    expected = [alone(model, *r) for r in requests]
    batch = DecodeBatch(model, threading.RLock())
    streams = [decode(model, ids, params, (), None, pool, batch=batch) for pool, ids, params in requests]
    tokens = [[next(s) for _ in range(3)] for s in streams]
    streams[1].close()
    assert len(batch.running) == 2
    for i in (0, 2):
        tokens[i] += list(streams[i])
        assert torch.stack(tokens[i], 1).tolist() == expected[i]


def test_a_reader_that_stops_taking_tokens_holds_at_most_max_ahead(model):
    memories = pools(model, 2)
    batch = DecodeBatch(model, threading.RLock())
    idle = decode(model, prompt(0), GREEDY, (), None, memories[0], batch=batch)
    busy = decode(model, prompt(1), GREEDY, (), None, memories[1], batch=batch)
    first = next(idle)  # prefilled and in the batch; then nobody reads it
    list(busy)
    assert len(batch.running[0].ready) == decoding.MAX_AHEAD
    assert torch.stack([first] + list(idle), 1).tolist() == alone(model, memories[0], prompt(0), GREEDY)


def test_long_prompts_prefill_in_chunks_that_others_can_step_between(model):
    memories = pools(model, 2)
    long_prompt = (torch.arange(PREFILL_QUERY_ROWS * 2 + 10) % 500)[None]
    batch = DecodeBatch(model, threading.RLock())
    short = decode(model, prompt(0), GREEDY, (), None, memories[0], batch=batch)
    first = next(short)
    steps = decode(model, long_prompt, GREEDY, (), None, memories[1], batch=batch)
    assert next(steps) is None and next(steps) is None  # two chunks done, more to come
    between = next(short)  # the short request decodes while the long prompt waits
    rest = list(steps)
    # On the CPU each chunk is CPU_PREFILL_QUERIES queries: a short wait for the others.
    assert rest.count(None) + 2 == -(-long_prompt.shape[1] // decoding.CPU_PREFILL_QUERIES) - 1
    rest = [t for t in rest if t is not None]
    assert torch.stack(rest, 1).tolist() == alone(model, memories[1], long_prompt, GREEDY)
    assert torch.stack([first, between] + list(short), 1).tolist() == alone(model, memories[0], prompt(0), GREEDY)


def test_a_prefill_in_small_chunks_gives_what_one_chunk_gives(model):
    """Each chunk attends only the slots filled so far (and the memory): the rest are empty."""
    memory = pools(model, 2)[1]
    ids = (torch.arange(90) % 500)[None]
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        whole = model.prefill(ids, mask, model.new_cache(memory, 1, 100))
        cache = model.new_cache(memory, 1, 100)
        chunked = list(model.prefill_chunks(ids, mask, cache, lambda: 7))
    assert len(chunked) == 13
    torch.testing.assert_close(torch.cat(chunked, 1), whole, rtol=0, atol=1e-5)


def test_a_request_lets_those_about_to_start_join_its_first_step(model):
    memories = pools(model, 2)
    batch = DecodeBatch(model, threading.RLock())
    batch.others_starting = lambda: True  # as a server's queue says
    first = decode(model, prompt(0), GREEDY, (), None, memories[1], batch=batch)
    assert next(first) is None  # prefilled: waits for the others
    second = decode(model, prompt(1), GREEDY, (), None, memories[0], batch=batch)
    assert next(second) is None
    rows: list[int] = []
    batch.on_step = rows.append
    tokens = [[next(first)], [next(second)]]
    assert rows == [2]  # both in the first step
    tokens = [head + list(steps) for head, steps in zip(tokens, (first, second))]
    assert torch.stack(tokens[0], 1).tolist() == alone(model, memories[1], prompt(0), GREEDY)
    assert torch.stack(tokens[1], 1).tolist() == alone(model, memories[0], prompt(1), GREEDY)


def test_a_long_prompt_goes_in_large_chunks_unless_others_may_wait(model):
    memory = pools(model, 1)[0]
    long_prompt = (torch.arange(PREFILL_QUERY_ROWS * 2 + 10) % 500)[None]
    batch = DecodeBatch(model, threading.RLock())
    alone_chunks = list(decode(model, long_prompt, GREEDY, (), None, memory, batch=batch)).count(None) + 1
    batch.serving = True  # as a server sets it
    waited_chunks = list(decode(model, long_prompt, GREEDY, (), None, memory, batch=batch)).count(None) + 1
    assert alone_chunks == 3
    assert waited_chunks == -(-long_prompt.shape[1] // decoding.CPU_PREFILL_QUERIES)


def test_the_engine_batches_generations_on_different_memories(tiny_engine):
    names = ["batch-a", "batch-b", "batch-c"]
    for i, name in enumerate(names):
        tiny_engine.pool(name).inject(f"Memory {name} holds fact number {i} about the deployment." * (i + 1))
    prompts = ["The deployment", "Fact number", "Memory holds"]
    expected = [tiny_engine.pool(n).generate(p, max_new_tokens=10) for n, p in zip(names, prompts)]
    generations = [tiny_engine.pool(n).generate(p, stream=True, max_new_tokens=10) for n, p in zip(names, prompts)]
    steps_before = tiny_engine.batch.steps
    texts = ["", "", ""]
    live = set(range(3))
    while live:
        for i in sorted(live):
            piece = next(generations[i], None)
            if piece is None:
                live.discard(i)
            else:
                texts[i] += piece
    assert texts == expected
    assert tiny_engine.batch.steps - steps_before <= 10 + 2


def test_readers_on_many_threads_share_steps(tiny_engine):
    names = [f"threads-{i}" for i in range(4)]
    for name in names:
        tiny_engine.pool(name).inject(f"{name} keeps the key under the mat.")
    expected = [tiny_engine.pool(n).generate("The key", max_new_tokens=16) for n in names]
    results = [None] * 4
    start = threading.Barrier(4)

    def read(i):
        generation = tiny_engine.pool(names[i]).generate("The key", stream=True, max_new_tokens=16)
        start.wait()
        results[i] = "".join(generation)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_mplus_requests_batch_with_their_own_long_term_reads():
    model = MemoryLLM.from_pretrained(FIXTURES / "reference_mplus" / "mha_sdpa" / "checkpoint")
    vocab, K = model.config.vocab_size, model.config.num_tokens
    memories = [model.pool, model.pool.clone()]  # as released: a long-term store already holds tokens
    for j in range(3):  # the copy moves on: its store and pending tokens differ
        model.inject((torch.arange(K + 3) * (j + 2))[None] % vocab, pool=memories[1])
    requests = [(memories[i % 2], prompt(i) % vocab, GREEDY) for i in range(3)]
    expected = [alone(model, *r) for r in requests]
    got, _ = together(model, requests)
    assert got == expected


def starting_batch(model) -> DecodeBatch:
    batch = DecodeBatch(model, threading.RLock())
    batch.others_starting = lambda: True  # as a server's queue says: requests arrive together
    return batch


def drained(streams) -> list[list[list[int]]]:
    """Each stream's tokens, taken in turns as readers on one thread would."""
    tokens = [[] for _ in streams]
    live = set(range(len(streams)))
    while live:
        for i in sorted(live):
            token = next(streams[i], "end")
            if isinstance(token, str):
                live.discard(i)
            elif token is not None:
                tokens[i].append(token)
    return [torch.stack(t, 1).tolist() for t in tokens]


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_short_prompts_arriving_together_prefill_in_one_pass(model, params):
    memories = pools(model)
    requests = [
        (memories[1], prompt(0, 4), params),
        (memories[2], torch.cat([prompt(1, 9), prompt(2, 9)]), params),  # two rows
        (memories[0], prompt(3, 7), params),  # an empty memory
        (memories[1], prompt(4, 2), params),
    ]
    expected = [alone(model, *r) for r in requests]
    batch = starting_batch(model)
    streams = [decode(model, ids, p, (), None, pool, batch=batch) for pool, ids, p in requests]
    assert [next(s) for s in streams] == [None] * 4  # each waits for the others
    rows: list[int] = []
    batch.on_step = rows.append
    assert drained(streams) == expected
    assert batch.prefills == 1
    assert rows[0] == 5  # every row in the first step


def test_a_shared_prefill_gives_each_prompt_its_own_prefill():
    """Whole writes recalled per prompt, left padding within a request, right padding between."""
    model = MemoryLLM.from_random(MemoryLLMConfig(**SHAPES["tiny-writes"]), seed=1)
    memory = model.new_pool(seed=2)
    for j in range(3):
        model.inject((torch.arange(20) * (j + 3))[None] % 200, pool=memory)
    two_rows = torch.tensor([[0, 0, 5, 9, 12], [4, 6, 8, 10, 12]])
    prompts = [(torch.arange(30, 40)[None] * 3) % 200, two_rows, prompt(1, 3)]
    masks = [torch.ones_like(prompts[0]), torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]), torch.ones_like(prompts[2])]
    with torch.inference_mode():
        own_caches = [model.new_cache(memory, ids.shape[0], 16) for ids in prompts]
        own = [model.prefill(ids, mask, c)[:, -1] for ids, mask, c in zip(prompts, masks, own_caches)]
        caches = [model.new_cache(memory, ids.shape[0], 16) for ids in prompts]
        shared = model.prefill_shared(list(zip(prompts, masks, caches)))
        torch.testing.assert_close(shared, torch.cat(own), rtol=0, atol=1e-5)
        for ids, a, b in zip(prompts, own_caches, caches):  # the cursors go on after each prompt
            token = torch.full((ids.shape[0], 1), 7)
            torch.testing.assert_close(model.decode_step(token, b), model.decode_step(token, a), rtol=0, atol=1e-5)


def test_a_prompt_without_room_for_the_longest_prefills_in_another_pass(model):
    memories = pools(model, 2)
    requests = [
        (memories[1], prompt(0, 3), SamplingParams(max_new_tokens=2)),  # its cache holds 5 tokens
        (memories[0], prompt(1, 9), GREEDY),
    ]
    expected = [alone(model, *r) for r in requests]
    batch = starting_batch(model)
    streams = [decode(model, ids, p, (), None, pool, batch=batch) for pool, ids, p in requests]
    assert [next(s) for s in streams] == [None, None]
    assert drained(streams) == expected
    assert batch.prefills == 2


def test_a_failed_shared_prefill_fails_each_request_it_held_and_the_batch_goes_on(model, monkeypatch):
    memories = pools(model, 2)
    batch = starting_batch(model)
    streams = [decode(model, prompt(i), GREEDY, (), None, memories[i], batch=batch) for i in range(2)]
    assert [next(s) for s in streams] == [None, None]
    monkeypatch.setattr(model, "prefill_shared", lambda prompts: (_ for _ in ()).throw(RuntimeError("device lost")))
    for stream in streams:
        with pytest.raises(RuntimeError, match="device lost"):
            next(stream)
    assert batch.waiting == [] and batch.running == []
    monkeypatch.undo()
    assert drained([decode(model, prompt(0), GREEDY, (), None, memories[0], batch=batch)]) == [
        alone(model, memories[0], prompt(0), GREEDY)
    ]


def test_a_request_closed_while_it_waits_to_prefill_leaves_the_queue(model):
    memories = pools(model, 2)
    batch = starting_batch(model)
    gone = decode(model, prompt(0), GREEDY, (), None, memories[1], batch=batch)
    assert next(gone) is None
    gone.close()
    assert batch.waiting == []
    kept = decode(model, prompt(1), GREEDY, (), None, memories[0], batch=batch)
    assert drained([kept]) == [alone(model, memories[0], prompt(1), GREEDY)]
    assert batch.prefills == 1 and batch.running == []
