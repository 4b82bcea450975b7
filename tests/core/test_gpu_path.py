"""What the CUDA path needs, shown on the CPU: CUDA's attention layout, a decode step that
compiles whole and never waits for the device, static steps reused across requests, dtypes.
Most run for MemoryLLM and M+ (whose rows read their own long-term tokens beside the shared prefix)."""

import contextlib
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

import memagent
from memagent import MemoryLLM
from memagent.model import memoryllm
from memagent.model.cuda_graph import LANE_ROWS, LANE_TOKENS, UNCAPTURED_LANE_MIN_ROWS, DecodeGraphs, length_bucket
from memagent.model.decoding import DecodeBatch, decode, next_token
from memagent.model.generation import generate, stream
from memagent.model.lora import build_lora_linear
from memagent.model.rope import RotaryEmbedding
from memagent.model.shapes import shape_config
from memagent.sampling import SamplingParams
from tests.core.test_decode_batch import drained, starting_batch, together


MPLUS = Path(__file__).parent.parent / "fixtures" / "reference_mplus" / "gqa_lora_eager" / "checkpoint"


@pytest.fixture(scope="module", params=["memoryllm", "mplus"])
def model(request):
    if request.param == "mplus":
        m = MemoryLLM.from_pretrained(MPLUS)  # its long-term memory is stored: every read recalls
        m.inject(torch.arange(3, 27)[None])  # and leaves tokens pending, which reads score too
        return m
    m = MemoryLLM.from_random(shape_config("tiny"), seed=0)
    m.inject(torch.arange(100, 140)[None])
    return m


def cuda_layout(sdpa):
    """scaled_dot_product_attention returning CUDA's fused-kernel layout: the same values in a
    transposed [B, T, heads, D] buffer, not contiguous."""

    def attention(*args, **kwargs):
        y = sdpa(*args, **kwargs)
        return y.transpose(1, 2).contiguous().transpose(1, 2)

    return attention


@torch.no_grad()
def test_grouped_query_attention_survives_cudas_output_layout(model, monkeypatch):
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped queries
    ids = torch.arange(60, 100)[None]
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    write, read = model.inject(ids, update=False), model(prompt).logits
    monkeypatch.setattr(memoryllm.F, "scaled_dot_product_attention", cuda_layout(memoryllm.F.scaled_dot_product_attention))
    assert not memoryllm.F.scaled_dot_product_attention(*(torch.ones(1, 2, 6, 4),) * 3).is_contiguous()
    pool = model.pool.clone()
    assert torch.equal(model.inject(ids, update=True, pool=pool), write)
    assert torch.allclose(model(prompt).logits, read, atol=1e-6)
    assert model(prompt, pool=pool).logits.shape == read.shape


def prefilled(model, prompt):
    cache = model.new_cache(model.pool, prompt.shape[0], prompt.shape[1] + 8)
    logits = model.lm_head(model.prefill(prompt, torch.ones_like(prompt), cache)[:, -1])
    return cache, logits.argmax(-1)[:, None]


def steps_compiled_and_eager(step, token, eager_state, compiled_state) -> None:
    """Three greedy steps of `step` compiled whole (a graph break raises) equal eager ones."""
    compiled = torch.compile(step, fullgraph=True)
    eager_token = compiled_token = token
    for _ in range(3):
        eager = step(eager_token, eager_state)
        graphed = compiled(compiled_token, compiled_state)
        assert torch.allclose(graphed, eager, atol=1e-4)
        eager_token = compiled_token = eager.argmax(-1)[:, None]


@torch.inference_mode()
def test_decode_step_compiles_whole_and_equals_eager(model):
    torch._dynamo.reset()
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    eager_cache, token = prefilled(model, prompt)
    compiled_cache, _ = prefilled(model, prompt)
    steps_compiled_and_eager(model.decode_step, token, eager_cache, compiled_cache)
    assert torch.equal(compiled_cache.next_slot, eager_cache.next_slot)
    assert torch.equal(compiled_cache.next_position, eager_cache.next_position)


@torch.inference_mode()
def test_a_step_over_several_memories_caches_compiles_whole_and_equals_eager(model):
    torch._dynamo.reset()
    other = model.new_pool(seed=4)
    model.inject(torch.arange(120, 150)[None], pool=other)
    prompts = [(model.pool, torch.tensor([[5, 6, 7]])), (other, torch.tensor([[8, 9, 10], [11, 12, 13]]))]

    def prefilled_caches():
        caches, tokens = [], []
        for pool, prompt in prompts:
            cache = model.new_cache(pool, prompt.shape[0], prompt.shape[1] + 8)
            tokens.append(model.lm_head(model.prefill(prompt, torch.ones_like(prompt), cache)[:, -1]).argmax(-1))
            caches.append(cache)
        return caches, torch.cat(tokens)[:, None]

    eager_caches, token = prefilled_caches()
    compiled_caches, _ = prefilled_caches()
    steps_compiled_and_eager(model.decode_rows, token, eager_caches, compiled_caches)


class HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to the host (item, bool, tolist, nonzero)."""

    SYNCING = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::equal"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING:
            self.reads.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def test_decode_step_and_sampling_never_read_back_to_the_host(model):
    cache, token = prefilled(model, torch.tensor([[5, 6, 7], [8, 9, 10]]))
    generator = torch.Generator().manual_seed(0)
    params = SamplingParams(do_sample=True, temperature=0.8, top_k=50, top_p=0.9)
    with HostReads() as mode:
        for _ in range(3):
            logits = model.decode_step(token, cache)
            token = next_token(logits, params, generator)[:, None]
    assert mode.reads == []
    with HostReads() as mode:
        int(cache.next_slot)
    assert mode.reads, "the detector must see a host read"


def test_dynamic_rope_creates_no_host_tensor_on_the_device():
    config = shape_config("tiny")
    config.rope_scaling = {"rope_type": "dynamic", "factor": 2.0}
    rotary = RotaryEmbedding(config).to("meta")  # any tensor made on the host would not be meta

    class HostTensors(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            assert not isinstance(out, torch.Tensor) or out.device.type == "meta", func
            return out

    with HostTensors():
        cos, _ = rotary(torch.zeros(1, 4, dtype=torch.long, device="meta"), torch.float32, seq_len=10 * config.max_position_embeddings)
    assert cos.device.type == "meta"


@torch.no_grad()
def test_static_steps_are_reused_across_requests_and_memories(model):
    graphs = DecodeGraphs(model, capture=False)
    other = model.new_pool(seed=1)
    model.inject(torch.arange(150, 180)[None], pool=other)
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    params = SamplingParams(max_new_tokens=12)

    def run(pool, g):
        return torch.stack(list(stream(model, prompts, params, [], pool=pool, graphs=g)), dim=1)

    for pool in (model.pool, other, model.pool):
        assert torch.equal(run(pool, graphs), run(pool, None))
    if model.config.long_term:  # `other` has stored nothing yet: its long-term region stays hidden
        assert other.long_term.sizes()[0] == 0 and model.pool.long_term.sizes()[0] > 0
    assert graphs.steps == 1, "one bucket, one static step, whichever memory it reads"
    short = SamplingParams(max_new_tokens=3)
    list(stream(model, prompts, short, [], graphs=graphs))
    list(stream(model, prompts[:1], params, [], graphs=graphs))
    assert graphs.steps == 2, "short answers decode eagerly; another batch size is another bucket"


def test_concurrent_requests_borrow_separate_steps(model):
    graphs = DecodeGraphs(model, capture=False)
    params = SamplingParams(max_new_tokens=10)
    prompt = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        alone = torch.stack(list(stream(model, prompt, params, [])), dim=1)
        a, b = stream(model, prompt, params, [], graphs=graphs), stream(model, prompt, params, [], graphs=graphs)
        interleaved = [(next(a), next(b)) for _ in range(10)]
    assert graphs.steps == 2
    for column, (x, y) in enumerate(interleaved):
        assert x.tolist() == y.tolist() == alone[:, column].tolist()


def memories(model):
    """The model's pool, another written one and an empty one."""
    other, empty = model.new_pool(seed=1), model.new_pool(seed=2)
    model.inject(torch.arange(150, 180)[None], pool=other)
    return model.pool, other, empty


def alone(model, requests) -> list[list[list[int]]]:
    return [torch.stack(list(stream(model, ids, p, [], pool=pool)), 1).tolist() for pool, ids, p in requests]


def one_row_requests(model):
    """Four one-row requests on three memories (two on one), of different lengths, samplings and
    prompts, one long enough to prefill in chunks while the others decode."""
    pools = [*memories(model)[:2], model.new_pool(seed=3)]
    model.inject(torch.arange(60, 90)[None], pool=pools[2])
    sampled = SamplingParams(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, seed=5)
    return [
        (pools[0], torch.tensor([[5, 6, 7]]), SamplingParams(max_new_tokens=12)),
        (pools[1], torch.tensor([[8, 9, 10, 4]]), sampled),
        (pools[2], torch.tensor([[14, 15]]), SamplingParams(max_new_tokens=9)),
        (pools[1], (torch.arange(80)[None] * 7) % 190, SamplingParams(max_new_tokens=12)),
    ]


@torch.no_grad()
def test_one_row_requests_on_several_memories_decode_in_one_lane_step(model):
    graphs = DecodeGraphs(model, capture=False)
    requests = one_row_requests(model)
    rows: list[int] = []
    got, batch = together(model, requests, join_after={2: 3, 3: 5}, graphs=graphs)
    assert got == alone(model, requests)
    (lane,) = graphs.lanes.values()
    assert lane.step is not None and not graphs.joint, "the lane's step, not one per set of requests"
    assert graphs.steps == 4 and lane.free == list(range(LANE_ROWS)), "four rows used, all given back"
    assert lane.step.tokens.shape == (LANE_ROWS, 1)


@torch.no_grad()
def test_static_prefills_give_what_an_eager_prefill_gives(model):
    """Prompts padded to a length bucket (as CUDA captures them) prefill to the same tokens, in a
    lane's rows, in a step of two rows with left padding, and beyond a shared prefill's length;
    each step keeps one per bucket. Reads that recall long-term tokens (M+) prefill eagerly."""
    graphs = DecodeGraphs(model, capture=False, static_prefill=True)
    long = (torch.arange(200)[None] * 7) % 190  # prefills alone (`Decoding.prefill`), bucket 256
    requests = one_row_requests(model) + [(model.pool, long, SamplingParams(max_new_tokens=10))]
    got, _ = together(model, requests, join_after={3: 2}, graphs=graphs)
    assert got == alone(model, requests)
    ids, mask = torch.tensor([[0, 0, 5, 6, 7], [9, 8, 10, 11, 12]]), torch.tensor([[0, 0, 1, 1, 1], [1] * 5])
    params = SamplingParams(max_new_tokens=9)
    two_rows = [list(stream(model, ids, params, [], mask, graphs=graphs, cuda_graph=cuda_graph)) for cuda_graph in (True, False)]
    assert torch.equal(*(torch.stack(tokens) for tokens in two_rows))
    (lane,) = graphs.lanes.values()
    buckets = sorted(bucket for step in [*lane.rows, *graphs.order] if step for bucket in step.prefills)
    # M+'s own pool holds long-term tokens (the requests of 16, 256 and two rows on it recall); the others not yet.
    assert buckets == ([16, 16, 128] if model.config.long_term else [16, 16, 16, 16, 128, 256])
    if not model.config.long_term:  # what a graph captures reads nothing back to the host
        cache, ids = model.new_cache(model.pool, 1, 16), torch.tensor([[5, 6, 7, 0]])
        with HostReads() as mode:
            model.prefill_padded(ids, torch.tensor([[1, 1, 1, 0]]), cache, torch.tensor(3))
        assert mode.reads == []


@torch.no_grad()
def test_compiled_lane_steps_give_the_same_tokens(model, monkeypatch):
    if model.config.long_term:
        pytest.skip("one model is enough: each compile takes seconds")
    torch._dynamo.reset()
    counters.clear()
    requests = one_row_requests(model)
    eager = alone(model, requests)
    monkeypatch.setattr(model, "compile_decode", True)
    monkeypatch.setattr(model, "_decode_graphs", None, raising=False)  # the model's own steps, made anew
    graphs = DecodeGraphs(model, capture=False)
    got, _ = together(model, requests, join_after={3: 2}, graphs=graphs)
    assert got == eager
    (lane,) = graphs.lanes.values()
    assert lane.step.decode is lane.decode_rows is not model.decode_rows
    assert counters["stats"]["unique_graphs"] == 2, "a row's step (whichever row) and the lane's"
    # Without steps given, a model that compiles its steps decodes in its own, on the CPU too.
    assert alone(model, requests[:1]) == eager[:1] and DecodeGraphs.of(model).lanes
    assert memagent.load("random:tiny", compile_decode=True).model.compile_decode


@torch.no_grad()
def test_uncaptured_lanes_step_a_few_rows_in_their_own_caches(model):
    graphs = DecodeGraphs(model, capture=False)
    requests = one_row_requests(model)[: UNCAPTURED_LANE_MIN_ROWS - 1]
    got, _ = together(model, requests, graphs=graphs)
    assert got == alone(model, requests)
    (lane,) = graphs.lanes.values()
    assert lane.step is None, "on the CPU a lane's step costs every row: a few rows step their own caches"


@torch.inference_mode()
def test_a_lane_step_gives_its_active_rows_what_their_own_caches_give_and_compiles_whole(model):
    torch._dynamo.reset()
    pools = memories(model)[:2]
    prompts = [torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, 10, 11, 12]])]
    own = [model.new_cache(pool, 1, 16) for pool in pools]
    lanes = [model.new_cache(pools[0], 4, 16, lane=True) for _ in range(2)]
    for lane in lanes:
        lane.active.copy_(torch.tensor([0, 1, 0, 1]))
        for row, pool, prompt in zip((1, 3), pools, prompts):
            cache = lane.row(row)
            cache.load_prefix(model.memory_prefix(pool))
            cache.reset(model.long_term_read(pool))
            model.prefill(prompt, torch.ones_like(prompt), cache)
    for cache, prompt in zip(own, prompts):
        model.prefill(prompt, torch.ones_like(prompt), cache)
    compiled = torch.compile(model.decode_rows, fullgraph=True)  # a graph break raises
    tokens = torch.tensor([[0], [17], [0], [23]])
    for _ in range(3):
        eager = model.decode_rows(tokens, [lanes[0]])
        graphed = compiled(tokens, [lanes[1]])
        expected = torch.cat([model.decode_step(tokens[r : r + 1], c) for r, c in zip((1, 3), own)])
        assert torch.allclose(eager[[1, 3]], expected, atol=1e-5) and torch.allclose(graphed, eager, atol=1e-4)
        tokens = eager.argmax(-1)[:, None]
    first = lanes[0].long_term_slots
    assert lanes[0].next_slot.tolist() == [0, first + 6, 0, first + 8], "inactive rows' cursors stand still"
    assert not lanes[0].key_valid[[0, 2], first:-1].any(), "inactive rows write only to the scratch slot"


@torch.no_grad()
def test_sets_of_static_steps_outside_a_lane_replay_one_step_over_their_caches(model):
    graphs = DecodeGraphs(model, capture=False)
    sampled = SamplingParams(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, seed=5)
    two_rows = torch.tensor([[8, 9, 10, 4], [11, 12, 4, 4]])
    prompts = [torch.tensor([[5, 6, 7], [1, 2, 3]]), two_rows, torch.tensor([[9, 5]])]
    params = [SamplingParams(max_new_tokens=12), sampled, SamplingParams(max_new_tokens=10)]
    # The one-row request is on the empty memory: outside the lane too, having no prefix.
    requests = list(zip(memories(model), prompts, params))
    expected = alone(model, requests)
    for _ in range(2):  # the second round borrows the same steps in another order
        batch = starting_batch(model)
        streams = [decode(model, ids, p, (), None, pool, batch=batch, graphs=graphs) for pool, ids, p in requests]
        assert drained(streams) == expected
        # All three together, then the two longer answers once the third has ended.
        assert graphs.steps == 3 and [len(j.caches) for j in graphs.joint.values()] == [3, 2]
    three, two = graphs.joint
    assert [step.number for step in three] == [1, 2, 3] and [step.number for step in two] == [1, 2]
    assert graphs.joint[three].tokens.shape == (5, 1), "one step over the three caches' five rows"
    assert not graphs.lanes


def test_a_static_step_over_several_caches_goes_with_any_of_them(model):
    graphs = DecodeGraphs(model, capture=False, max_steps=2)
    params = SamplingParams(max_new_tokens=10)
    batch = DecodeBatch(model, contextlib.nullcontext())
    with torch.no_grad():
        streams = [decode(model, torch.tensor([[5, 6, 7]] * 2), params, (), None, pool, batch=batch, graphs=graphs)
                   for pool in memories(model)[:2]]
        drained(streams)
        assert len(graphs.joint) == 1
        list(stream(model, torch.tensor([[5, 6, 7]] * 3), params, [], graphs=graphs))  # another bucket
    assert graphs.steps == 2 and not graphs.joint, "an evicted step's joint steps go with it"


def test_one_row_requests_beyond_a_lanes_length_take_steps_of_their_own(model):
    graphs = DecodeGraphs(model, capture=False)
    list(stream(model, torch.tensor([[5, 6, 7]]), SamplingParams(max_new_tokens=LANE_TOKENS), [], graphs=graphs))
    assert not graphs.lanes and graphs.steps == 1


def test_length_buckets_are_powers_of_two():
    assert [length_bucket(n) for n in (1, 64, 65, 300, 1024)] == [64, 64, 128, 512, 1024]


@torch.no_grad()
def test_sparse_end_of_sequence_checks_give_the_same_tokens(model):
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    free = generate(model, prompts, max_new_tokens=10, eos_token_id=[])
    eos = [int(free[0, 2]), int(free[1, 4]), int(free[2, 1])]
    every = generate(model, prompts, max_new_tokens=10, eos_token_id=eos)
    params = SamplingParams(max_new_tokens=10)
    sparse = torch.stack(list(stream(model, prompts, params, eos, eos_check_every=4)), dim=1)
    assert sparse.shape[1] >= every.shape[1]
    assert torch.equal(sparse[:, : every.shape[1]], every)
    pad = model.config.pad_token_id
    assert (sparse[:, every.shape[1] :] == pad).all(), "finished rows emit pad"


@torch.no_grad()
def test_seeded_sampling_uses_a_generator_on_the_models_device(model, monkeypatch):
    seen = []
    real = torch.multinomial

    def multinomial(probs, n, generator=None):
        seen.append((probs.device, generator.device))
        return real(probs, n, generator=generator)

    monkeypatch.setattr(torch, "multinomial", multinomial)
    options = dict(max_new_tokens=6, do_sample=True, top_k=20, seed=3, eos_token_id=[])
    first = model.generate(torch.tensor([[5, 6, 7]]), **options)
    assert torch.equal(first, model.generate(torch.tensor([[5, 6, 7]]), **options))
    assert seen and all(p == g == model.device for p, g in seen)


@torch.no_grad()
def test_chunked_prefill_equals_one_pass(model, monkeypatch):
    prompt = torch.arange(140, 177).reshape(1, 37).repeat(2, 1)
    mask = torch.ones_like(prompt)
    mask[1, :5] = 0
    whole = model(prompt, attention_mask=mask)
    monkeypatch.setattr(memoryllm, "PREFILL_QUERY_ROWS", 10)  # 5 tokens per chunk at batch 2
    chunked = model(prompt, attention_mask=mask)
    assert torch.allclose(chunked.logits, whole.logits, atol=1e-5)
    if model.config.long_term:  # each layer recalls from the whole prompt, not from one chunk
        assert torch.equal(chunked.long_term_order, whole.long_term_order)


@torch.no_grad()
def test_long_term_tokens_are_per_row_and_the_memory_prefix_is_shared():
    m = MemoryLLM.from_pretrained(MPLUS)
    M, N = m.pool.long_term.slots, m.config.num_memory_tokens
    cache = m.new_cache(m.pool, 3, 8)
    assert cache.layers[0].prefix_keys.shape[:3] == (1, m.config.num_key_value_heads, 1 + N)  # bos + memory, once
    assert cache.layers[0].keys.shape[2] == M + 8 and cache.prefix_length == 1 + M + N
    m.prefill(torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.ones(3, 2, dtype=torch.long), cache)
    assert cache.key_valid[:, :M].all() and int(cache.next_slot) == M + 2
    assert cache.next_position.flatten().tolist() == [1 + M + N + 2] * 3
    rows = cache.layers[0].keys[:, :, :M]
    assert not torch.equal(rows[0], rows[1]), "each row recalls for its own prompt"


@torch.no_grad()
def test_prefix_is_shared_by_every_row_and_follows_the_models_dtype():
    m = MemoryLLM.from_random(shape_config("tiny"), seed=0)
    m.inject(torch.arange(100, 140)[None])
    cache = m.new_cache(m.pool, 4, 16)
    prefix = m.memory_prefix(m.pool)
    assert cache.layers[0].prefix_keys is prefix.keys[0] and prefix.keys[0].shape[0] == 1  # no per-row copy
    graphs = DecodeGraphs.of(m)
    m.to(torch.bfloat16)
    assert DecodeGraphs.of(m) is not graphs, "steps made for float32 buffers are not reused"
    m.pool.prefix_kv = None
    cache = m.new_cache(m.pool, 2, 16)
    tensors = [t for layer in cache.layers for t in (layer.prefix_keys, layer.prefix_values, layer.keys, layer.values)]
    assert {(t.dtype, t.device.type) for t in tensors} == {(torch.bfloat16, "cpu")}
    out = m.generate(torch.tensor([[5, 6, 7], [8, 9, 10]]), max_new_tokens=4, eos_token_id=[])
    assert out.shape == (2, 4)


def test_read_adapter_is_merged_in_float32_then_rounded_once():
    torch.manual_seed(0)
    base = torch.randn(64, 32)
    adapters = {"read": (torch.randn(4, 32) * 1e-2, torch.randn(64, 4) * 1e-2), "write": (torch.randn(4, 32), torch.randn(64, 4))}
    layer = build_lora_linear(base, None, adapters, 2.0, "read", "write", dtype=torch.bfloat16)
    A, B = adapters["read"]
    assert torch.equal(layer.weight, (base + 2.0 * B @ A).to(torch.bfloat16))
    assert layer.write_A.dtype == layer.write_B.dtype == torch.bfloat16


def test_an_engine_compiles_its_decode_steps_before_the_first_request():
    torch._dynamo.reset()
    counters.clear()
    engine = memagent.load("random:tiny", compile_decode=True)
    engine.prepare_decode()
    (lane,) = DecodeGraphs.of(engine.model).lanes.values()
    assert lane.step is not None and counters["stats"]["unique_graphs"] == 2, "a row's step and the lane's"
    pool = engine.pool("alice")
    pool.inject("Alice keeps bees.")
    pool.generate("Alice", max_new_tokens=8)
    assert counters["stats"]["unique_graphs"] == 2, "no compile at the first request"
