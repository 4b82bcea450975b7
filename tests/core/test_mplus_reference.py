"""Released M+ checkpoints behave as the reference (`modeling_mplus.py`) on every shipped case.

Floats within 1e-4 in float32; candidate orders, ages, recall frequencies, drop positions and
greedy tokens exactly. tests/fixtures/reference_mplus/README.md states the semantics.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from memagent import MemoryLLM
from tests.conftest import FIXTURES

TOL = 1e-4
CASES = sorted(p.name for p in (FIXTURES / "reference_mplus").iterdir() if p.is_dir())


class Case:
    def __init__(self, name: str, device: str = "cpu"):
        folder = FIXTURES / "reference_mplus" / name
        self.model = MemoryLLM.from_pretrained(folder / "checkpoint", device=device, dtype=torch.float32)
        self.v = load_file(folder / "vectors.safetensors")
        self.spec = json.loads((folder / "case.json").read_text())
        self.L = self.spec["layers"]

    @property
    def long_term(self):
        return self.model.pool.long_term

    def inject_all(self, on_inject=lambda i, new, dropped: None) -> None:
        """The case's writes, each seeded as the reference seeded its global generator."""
        pool = self.model.pool
        write, drops = pool.write, []
        pool.write = lambda new: drops.append(write(new)) or drops[-1]  # observe what each write drops
        for i, seed in enumerate(self.spec["inject_seeds"]):
            pool.generator.manual_seed(seed)
            new = self.model.inject(self.v[f"ctx.{i}"])
            on_inject(i, new, drops[-1])


@pytest.fixture(params=CASES)
def case(request) -> Case:
    return Case(request.param)


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    assert (actual.float().cpu() - expected.float()).abs().max().item() < TOL


def assert_store(case: Case, when: str):
    for layer in range(case.L):
        rows = case.long_term.stored[layer]
        assert_close(rows.tokens, case.v[f"ltm_{when}.{layer}"])
        assert_close(rows.keys, case.v[f"ltm_keys_{when}.{layer}"])
        assert torch.equal(rows.ages.cpu(), case.v[f"ltm_ages_{when}.{layer}"])
        assert torch.equal(case.long_term.frequencies[layer].cpu(), case.v[f"ltm_rf_{when}.{layer}"])


@torch.no_grad()
def test_checkpoint_loads_pool_store_and_bookkeeping(case):
    lt = case.long_term
    assert case.model.memory_initialized
    assert torch.equal(case.model.memory, case.v["stm_before"])
    assert torch.equal(lt.pool_ages, case.v["stm_ages_before"])
    assert_store(case, "before")
    assert lt.update_step == case.v["update_step_before"].item()
    assert all(len(rows) == 0 for rows in lt.pending)
    assert lt.sizes() == [case.spec["ltm_initial_size"]] * case.L
    assert lt.slots == case.spec["ltm_blocks"] * case.spec["K"]


@torch.no_grad()
def test_read_retrieves_and_orders_long_term_tokens(case):
    out = case.model(case.v["prompt"])
    assert torch.equal(out.long_term_order[0], case.v["ltm_order_before"])
    assert_close(out.logits, case.v["logits_before"])


@torch.no_grad()
def test_reads_change_no_state(case):
    before = case.long_term.clone()
    case.model(case.v["prompt"])
    case.model.generate(case.v["prompt"], max_new_tokens=3, eos_token_id=[])
    assert torch.equal(case.long_term.pool_ages, before.pool_ages)
    for layer in range(case.L):
        assert torch.equal(case.long_term.frequencies[layer], before.frequencies[layer])
        assert torch.equal(case.long_term.stored[layer].ages, before.stored[layer].ages)


@torch.no_grad()
@pytest.mark.parametrize("context, expected", [("long_ctx", "delta_long"), ("short_ctx", "delta_short")])
def test_new_memory_without_update_changes_nothing(case, context, expected):
    memory, sizes, step = case.model.memory.clone(), case.long_term.sizes(), case.long_term.update_step
    new = case.model.inject(case.v[context], update=False)
    assert_close(new[None], case.v[expected])
    assert torch.equal(case.model.memory, memory)
    assert case.long_term.sizes() == sizes and case.long_term.update_step == step
    assert all(len(rows) == 0 for rows in case.long_term.pending)


@torch.no_grad()
def test_each_write_drops_moves_merges_and_prunes_as_the_reference(case):
    v = case.v

    def check(i, new, dropped):
        assert_close(new[None], v[f"new_memory.{i}"])
        assert torch.equal(dropped.index, v[f"drop_idx.{i}"])
        assert_close(case.model.memory, v[f"stm_after.{i}"])
        assert case.long_term.sizes() == case.spec["ltm_sizes_after"][i]
        assert [len(rows) for rows in case.long_term.pending] == [case.spec["cache_size_after"][i]] * case.L

    case.inject_all(check)
    lt = case.long_term
    assert_close(case.model.memory, v["stm_final"])
    assert torch.equal(lt.pool_ages, v["stm_ages_final"])
    assert_store(case, "final")
    assert_close(torch.stack([rows.tokens for rows in lt.pending]), v["cache_final"])
    assert_close(torch.stack([rows.keys for rows in lt.pending]), v["cache_keys_final"])
    assert torch.equal(torch.stack([rows.ages for rows in lt.pending]), v["cache_ages_final"])
    assert lt.update_step == v["update_step_final"].item()


@torch.no_grad()
def test_read_after_writes_retrieves_from_store_and_pending(case):
    case.inject_all()
    out = case.model(case.v["prompt"])
    assert torch.equal(out.long_term_order[0], case.v["ltm_order_final"])
    assert (out.long_term_order >= torch.tensor(case.long_term.sizes())[None, :, None]).any(), "pending rows retrieved"
    assert_close(out.logits, case.v["logits_final"])


def test_greedy_generation_after_writes(case):
    case.inject_all()
    # generate retrieves once, from the prompt: the same tokens a read of the prompt gets.
    assert torch.equal(case.v["ltm_order_greedy"], case.v["ltm_order_final"])
    out = case.model.generate(case.v["prompt"], max_new_tokens=12, do_sample=False, eos_token_id=[])
    assert out.tolist() == case.v["greedy"].tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("name", CASES)
def test_reference_on_cuda(name):
    """The store's keys follow the pool onto the GPU (its tokens stay in host memory); reads,
    writes and graphed decoding still match."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        case = Case(name, device="cuda")
        prompt = case.v["prompt"].cuda()
        with torch.no_grad():
            assert torch.equal(case.model(prompt).long_term_order[0].cpu(), case.v["ltm_order_before"])
            case.inject_all()
            out = case.model(prompt)
        stored = case.long_term.stored[0]
        assert case.long_term.pool_ages.is_cuda and stored.keys.is_cuda and not stored.tokens.is_cuda
        assert torch.equal(out.long_term_order[0].cpu(), case.v["ltm_order_final"])
        assert_close(out.logits, case.v["logits_final"])
        assert_store(case, "final")
        for graphed in (False, True):
            tokens = case.model.generate(prompt, max_new_tokens=12, eos_token_id=[], cuda_graph=graphed)
            assert tokens.tolist() == case.v["greedy"].tolist()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
