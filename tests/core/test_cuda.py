"""CUDA: the reference still holds in fp32, the graphed decode step equals the eager one, bf16 runs,
graphs are captured once per bucket and reused (prefills' too), requests on several memories replay one graph
together, and a decode step (and an ask's narrowing to spans) never waits for the host."""

import functools

import pytest
import torch
from safetensors.torch import load_file

from memagent import MemoryLLM, default_model
from memagent.answer_spans import AnswerSpans, SpanVocabulary, question_words
from memagent.model.cuda_graph import DecodeGraphs
from memagent.model.decoding import decode, next_token
from memagent.model.generation import stream
from memagent.model.shapes import shape_config
from memagent.sampling import SamplingParams
from tests.conftest import FIXTURES, REFERENCE_CASES
from tests.core.test_decode_batch import drained, starting_batch

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def exact_fp32():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_reference_on_cuda(name):
    folder = FIXTURES / "reference" / name
    v = {k: t.cuda() for k, t in load_file(folder / "vectors.safetensors").items()}
    model = MemoryLLM.from_pretrained(folder / "checkpoint", device="cuda", dtype=torch.float32)
    with torch.no_grad():
        assert (model(v["prompt"]).logits - v["logits"]).abs().max() < 1e-4
        assert (model.inject(v["long_ctx"], update=False)[None] - v["delta_long"]).abs().max() < 1e-4
    for graphed in (False, True):
        out = model.generate(v["prompt"], max_new_tokens=12, eos_token_id=[], cuda_graph=graphed)
        assert out.tolist() == v["greedy"].tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graphed_decode_matches_eager_in_half_precision(dtype):
    model = MemoryLLM.from_random(shape_config("smollm2-135m"), device="cuda", dtype=dtype)
    model.inject(torch.randint(0, 49152, (1, 256), device="cuda"))
    prompts = torch.randint(0, 49152, (4, 32), device="cuda")
    eager = model.generate(prompts, max_new_tokens=24, eos_token_id=[], cuda_graph=False)
    graphed = model.generate(prompts, max_new_tokens=24, eos_token_id=[], cuda_graph=True)
    assert torch.equal(eager, graphed)


def test_graphs_are_captured_once_per_bucket_and_reused_across_memories():
    model = MemoryLLM.from_random(shape_config("smollm2-135m"), device="cuda", dtype=torch.bfloat16)
    model.inject(torch.randint(0, 49152, (1, 128), device="cuda"))
    other = model.new_pool(seed=1)
    model.inject(torch.randint(0, 49152, (1, 128), device="cuda"), pool=other)
    prompts = torch.randint(0, 49152, (2, 16), device="cuda")
    options = dict(max_new_tokens=16, eos_token_id=[])
    for pool in (model.pool, other, model.pool):
        graphed = model.generate(prompts, pool=pool, **options)
        assert torch.equal(graphed, model.generate(prompts, pool=pool, cuda_graph=False, **options))
    graphs = DecodeGraphs.of(model)
    assert graphs.captures == 1 and graphs.steps == 1
    model.generate(prompts, max_new_tokens=4, eos_token_id=[])
    assert graphs.captures == 1, "short answers are not captured"


@pytest.mark.parametrize("rows", [(1, 1, 1), (1, 2, 1)], ids=["lane", "joint"])
@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_requests_on_several_memories_replay_one_graph_and_get_their_own_tokens(do_sample, rows):
    """One-row requests step in their lane's graph; a set with a two-row request, in its own."""
    model = MemoryLLM.from_random(shape_config("smollm2-135m"), device="cuda")
    pools = [model.new_pool(seed=i) for i in range(3)]
    for i, pool in enumerate(pools):
        model.inject(torch.randint(0, 49152, (1, 96 + 32 * i), device="cuda"), pool=pool)
    params = SamplingParams(max_new_tokens=16, do_sample=do_sample, top_k=50, seed=3)
    prompts = [torch.randint(0, 49152, (n, 12), device="cuda") for n in rows]
    requests = list(zip(pools, prompts))
    alone = [torch.stack(list(stream(model, ids, params, [], pool=pool)), 1).tolist() for pool, ids in requests]
    batch = starting_batch(model)
    assert drained([decode(model, ids, params, (), None, pool, batch=batch) for pool, ids in requests]) == alone
    graphs = DecodeGraphs.of(model)
    if rows == (1, 1, 1):
        (lane,) = graphs.lanes.values()
        step = functools.partial(lane.decode, (0, 1, 2))
        assert lane.step.graph is not None and not graphs.joint
    else:
        (step,) = graphs.joint.values()
        assert step.graph is not None and len(step.caches) == 3
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            logits = step(torch.zeros(sum(rows), 1, dtype=torch.long, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert logits.shape[0] == sum(rows) and torch.isfinite(logits).all()


def test_prompts_prefill_in_graphs_captured_per_bucket_with_the_tokens_of_an_eager_prefill():
    model = MemoryLLM.from_random(shape_config("smollm2-135m"), device="cuda")
    model.inject(torch.randint(0, 49152, (1, 128), device="cuda"))
    params = SamplingParams(max_new_tokens=12)
    graphs = DecodeGraphs.of(model)
    for length in (5, 16, 11, 17, 300, 9):  # buckets 16, 16, 16, 32, 512, 16
        ids = torch.randint(0, 49152, (1, length), device="cuda")
        eager = torch.stack(list(stream(model, ids, params, [], cuda_graph=False)), 1)
        assert torch.equal(torch.stack(list(stream(model, ids, params, [])), 1), eager)
    assert graphs.prefill_captures == 3, "one per bucket of the lane row that every request took"
    with torch.inference_mode(), graphs.borrow(model.pool, 1, 64) as step:
        ids = torch.randint(0, 49152, (1, 7), device="cuda")
        step.prefill(ids, torch.ones_like(ids))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            logits = step.prefill(ids, torch.ones_like(ids))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits).all()


def test_graph_replay_and_sampling_never_sync():
    model = MemoryLLM.from_random(shape_config("smollm2-135m"), device="cuda", dtype=torch.bfloat16)
    model.inject(torch.randint(0, 49152, (1, 128), device="cuda"))
    prompts = torch.randint(0, 49152, (4, 16), device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    params = SamplingParams(do_sample=True, top_k=50, top_p=0.9)
    with DecodeGraphs.of(model).borrow(model.pool, 4, 64) as step, torch.inference_mode():
        logits = model.lm_head(model.prefill(prompts, torch.ones_like(prompts), step.cache)[:, -1])
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(4):
                logits = step(next_token(logits, params, generator)[:, None])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(logits.float()).all()


def test_residency_budgets_from_free_memory_and_pins_host_pools():
    from memagent.store.residency import HOST, Residency

    model = MemoryLLM.from_random(shape_config("tiny"), device="cuda")
    free = torch.cuda.mem_get_info()[0]
    pools = [model.new_pool(seed=i) for i in range(2)]
    residency = Residency("cuda", evict=lambda key: None, host_bytes=None)
    assert 0 < residency.device_bytes <= free
    residency.device_bytes = pools[0].nbytes  # room for one: the older pool moves to the host
    residency.use("a", pools[0])
    residency.use("b", pools[1])
    assert residency.tier("a") == HOST and pools[0].memory.is_pinned()
    residency.use("a", pools[0])
    assert pools[0].memory.is_cuda


def test_prefix_attention_in_half_precision_matches_float32():
    from memagent.model.attention import _prefix_attention

    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 128, device="cuda", generator=generator) for n in (12, 3000, 3000))
    out, lse = _prefix_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 128**-0.5)  # flash attention
    expected_out, expected_lse = _prefix_attention(q, k, v, 128**-0.5)  # float32 products
    assert out.shape == expected_out.shape and lse.shape == expected_lse.shape
    assert (out.float() - expected_out).abs().max() < 3e-2
    assert (lse - expected_lse).abs().max() < 3e-2


def test_answer_spans_narrow_asks_without_a_sync():
    tokenizer = default_model.load_tokenizer()
    texts = [["Ottilie keeps a parrot called Ravi.", '{"shipment": 584, "dest": "Ghent"}']] * 2
    spans = AnswerSpans.of(SpanVocabulary(tokenizer), texts, [question_words("Who is Ravi?")] * 2)
    cpu, cuda = spans, spans.to(torch.device("cuda"))
    logits, eos = torch.randn(2, len(tokenizer)), torch.tensor([2])
    tokens = []
    for produced in range(4):
        token = cpu.restrict(logits, produced, eos).argmax(-1)
        cpu.advance(token, produced)
        tokens.append(token)
    logits, eos = logits.cuda(), eos.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_device = []
        for produced in range(len(tokens)):
            on_device.append(cuda.restrict(logits, produced, eos).argmax(-1))
            cuda.advance(on_device[-1], produced)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(torch.stack(on_device).cpu(), torch.stack(tokens)), "the device narrows as the host does"
