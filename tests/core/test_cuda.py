"""CUDA: the reference still holds in fp32, the graphed decode step equals the eager one, bf16 runs."""

import pytest
import torch
from safetensors.torch import load_file

from memagent import MemoryLLM
from memagent.model.shapes import shape_config
from tests.conftest import FIXTURES, REFERENCE_CASES

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
