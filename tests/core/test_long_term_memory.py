"""M+'s long-term memory beyond the reference cases: the rules no case reaches, batches, fresh pools."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from memagent import Engine, MemoryLLM, default_model
from memagent.model.config import LongTermConfig, MemoryLLMConfig
from memagent.model.loading import CheckpointError
from memagent.model.long_term_memory import LongTermMemory, Rows
from memagent.model.memory_pool import Dropped
from memagent.model.shapes import SHAPES
from tests.conftest import FIXTURES

CASE = FIXTURES / "reference_mplus" / "mha_sdpa"
K, d, s = 4, 3, 2


def store(ages, frequencies, *, decay=1.0, initial=2.0, merge_every=1) -> LongTermMemory:
    """One layer, M = 8, with rows whose token values are their indices."""
    config = LongTermConfig(
        num_ltm_blocks=2, selector_hidden_dim=s, update_ltm_frequency=merge_every,
        decay_frequency=decay, initial_rf_when_moving_stm_to_ltm=initial,
    )
    lt = LongTermMemory.empty(config, K, torch.zeros(1, 12, d))
    n = len(ages)
    tokens = torch.arange(n, dtype=torch.float32)[:, None].expand(n, d)
    lt.stored = [Rows(tokens, torch.zeros(n, s), torch.tensor(ages))]
    lt.frequencies = [torch.tensor(frequencies, dtype=torch.float64)]
    return lt


def write(lt: LongTermMemory, first_value: float) -> None:
    """A write that dropped pool positions 0..K-1, holding tokens first_value, first_value + 1, ..."""
    tokens = (torch.arange(K, dtype=torch.float32) + first_value)[None, :, None].expand(1, K, d)
    lt.write(Dropped(torch.arange(K)[None], tokens), torch.zeros(1, K, s), K)


def test_a_store_smaller_than_m_cycles_its_last_indices_oldest_first():
    lt = store(ages=[3, 1, 3, 0, 2], frequencies=[1.0] * 5)
    assert not lt.scored(0)
    # Candidates (t - 8) mod 5 = 2 3 4 0 1 2 3 4; by age, oldest first, later index first among equals.
    assert lt.choose(0, None, batch=2).tolist() == [[2, 2, 0, 4, 4, 1, 3, 3]] * 2


def test_scored_read_takes_the_best_m_of_store_then_pending_oldest_first():
    lt = store(ages=list(range(10)), frequencies=[1.0] * 10, merge_every=2)
    write(lt, 100.0)  # pending now: 4 rows, candidates 10..13, aged from the pool (0)
    scores = torch.zeros(1, 14)
    best = [0, 3, 5, 6, 9, 10, 12, 13]
    scores[0, best] = 1.0
    chosen = lt.choose(0, scores, batch=1)
    assert chosen.tolist() == [[9, 6, 5, 3, 0, 13, 12, 10]]  # stored ages grew by K; pending are youngest
    assert lt.tokens(0, chosen)[0, :, 0].tolist() == [9.0, 6, 5, 3, 0, 103, 102, 100]


def test_merge_prunes_only_when_more_than_m_survive_else_gives_the_decay_back():
    lt = store(ages=[0] * 6, frequencies=[2.0, 2, 2, 2, 1, 1])
    write(lt, 100.0)
    # 6 + 4 rows after decay: 8 above 0.01, exactly M, so nothing goes and the decay is undone.
    assert lt.sizes() == [10]
    assert lt.frequencies[0].tolist() == [2.0, 2, 2, 2, 1, 1, 2, 2, 2, 2]
    write(lt, 200.0)
    # 14 rows, 12 survive (> M): rows 4 and 5 (frequency 1 -> 0) are pruned.
    assert lt.sizes() == [12]
    assert lt.stored[0].tokens[:, 0].tolist() == [0.0, 1, 2, 3, 100, 101, 102, 103, 200, 201, 202, 203]
    assert lt.frequencies[0].tolist() == [1.0] * 12
    # Stored rows age K per write; a dropped row keeps its pool age (0 here) until the next write.
    assert lt.stored[0].ages.tolist() == [2 * K] * 4 + [K] * 4 + [0] * 4


def mplus_tiny() -> MemoryLLM:
    long_term = LongTermConfig(num_ltm_blocks=2, selector_hidden_dim=16, num_selector_layers=2, update_ltm_frequency=2)
    return MemoryLLM.from_random(MemoryLLMConfig(**SHAPES["tiny"], long_term=long_term), seed=0)


@torch.no_grad()
def test_a_fresh_pool_fills_then_grows_its_long_term_memory():
    model = mplus_tiny()
    prompt = torch.arange(5, 12)[None]
    assert model.config.num_memory_tokens == 48 and model.pool.long_term.slots == 16
    model.inject(torch.arange(20, 40)[None])  # fills the empty pool: nothing dropped
    out = model(prompt)
    assert out.long_term_order is None and torch.isfinite(out.logits).all()
    model.inject(torch.arange(40, 50)[None])  # second write: merges the 8 tokens it dropped
    assert model.pool.long_term.sizes() == [8, 8]
    assert model(prompt).long_term_order.max() < 8, "a store smaller than M is cycled"
    for start in (60, 70):
        model.inject(torch.arange(start, start + 10)[None])
    assert model.pool.long_term.sizes() == [24, 24]
    assert model(prompt).long_term_order.shape == (1, 2, 16)
    model.reset_memory()
    assert model.pool.long_term.sizes() == [0, 0] and model(prompt).long_term_order is None


def test_merges_append_in_place_without_touching_what_was_saved():
    lt = store([0] * 8, [1.0] * 8, decay=0.0)
    saved = lt.state_dict()
    write(lt, 100.0)
    buffer = lt.stored[0].tokens
    for first in (200.0, 300.0):
        write(lt, first)
    assert lt.stored[0].tokens.data_ptr() == buffer.data_ptr()  # grown in place: no copy of the store
    assert lt.stored[0].tokens[:, 0].tolist() == list(range(8)) + [100, 101, 102, 103, 200, 201, 202, 203, 300, 301, 302, 303]
    middle = lt.state_dict()
    lt.reset()
    write(lt, 400.0)
    write(lt, 500.0)
    assert saved["ltm.0"][:, 0].tolist() == list(range(8))  # earlier snapshots keep their rows
    assert middle["ltm.0"][:, 0].tolist()[-4:] == [300, 301, 302, 303]


@torch.no_grad()
def test_clone_is_independent():
    model = mplus_tiny()
    for start in (20, 40, 60):
        model.inject(torch.arange(start, start + 10)[None])
    twin = model.pool.clone()
    model.inject(torch.arange(80, 90)[None], pool=twin)
    assert model.pool.long_term.sizes() == [8, 8] and len(model.pool.long_term.pending[0]) == 8
    assert twin.long_term.sizes() == [24, 24] and len(twin.long_term.pending[0]) == 0


@torch.no_grad()
def test_a_padded_batch_retrieves_per_row_as_each_prompt_alone():
    model = MemoryLLM.from_pretrained(CASE / "checkpoint")
    model.inject(torch.arange(3, 27)[None])  # leaves tokens pending, which reads score too
    prompts = [torch.tensor([5, 9, 14, 3, 77, 21, 8]), torch.tensor([40, 41, 2, 150])]
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, 7 - len(p) :], mask[row, 7 - len(p) :] = p, 1
    batch = model(ids, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = model(p[None])
        assert torch.equal(batch.long_term_order[row], alone.long_term_order[0])
        assert (batch.logits[row, 7 - len(p) :] - alone.logits[0]).abs().max() < 1e-4


def test_config_round_trips_with_its_long_term_fields():
    raw = json.loads((CASE / "checkpoint" / "config.json").read_text())
    config = MemoryLLMConfig.from_dict(raw)
    assert config.long_term.num_ltm_blocks == 2 and config.long_term.selector_activation == "silu"
    assert "num_ltm_blocks" not in config.extra
    again = MemoryLLMConfig.from_dict(config.to_dict())
    assert again.long_term == config.long_term and again.num_memory_tokens == config.num_memory_tokens == 24


def copy_checkpoint(tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(CASE / "checkpoint", folder)
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def test_a_checkpoint_missing_long_term_tensors_is_refused(tmp_path):
    folder = copy_checkpoint(tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["ltm_keys.1"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="ltm_keys.1"):
        MemoryLLM.from_pretrained(folder)


def test_an_unsupported_update_mode_is_refused_at_load(tmp_path):
    folder = copy_checkpoint(tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(raw | {"update_ltm_mode": "delayed"}))
    with pytest.raises(ValueError, match="update_ltm_mode"):
        MemoryLLM.from_pretrained(folder)


@torch.no_grad()
def test_an_engine_writes_reads_and_saves_named_m_plus_pools(tmp_path):
    engine = Engine(mplus_tiny(), default_model.load_tokenizer())
    pool = engine.pool("alice")
    for i in range(4):
        pool.inject(f"Note {i}: the deploy key for service {i} is K-{i * 37}.", progress=False)
    assert pool.pool.long_term.sizes()[0] > 0 and engine.pool("bob").pool.long_term.sizes()[0] == 0
    answer = pool.generate("The deploy key for service 2 is", max_new_tokens=4)
    pool.save(tmp_path / "alice.safetensors")
    pool.load(tmp_path / "alice.safetensors")
    assert pool.generate("The deploy key for service 2 is", max_new_tokens=4) == answer
    assert pool.pool.long_term.sizes()[0] > 0


@torch.no_grad()
def test_the_long_term_memory_follows_the_model_to_another_dtype():
    model = mplus_tiny()
    for start in (20, 40, 60):
        model.inject(torch.arange(start, start + 10)[None])
    model.to(torch.bfloat16)
    lt = model.pool.long_term
    assert {lt.stored[0].tokens.dtype, lt.stored[0].keys.dtype, lt.pending[0].tokens.dtype} == {torch.bfloat16}
    assert lt.stored[0].ages.dtype == lt.pool_ages.dtype == torch.long
    assert lt.frequencies[0].dtype == torch.float64
    model.inject(torch.arange(80, 90)[None])
    assert lt.sizes() == [24, 24]
    assert torch.isfinite(model(torch.arange(5, 12)[None]).logits).all()


def test_a_bounded_store_evicts_the_least_recalled_then_the_oldest_and_keeps_its_order():
    lt = store(ages=[5, 9, 1, 7, 3, 9], frequencies=[2.0, 2, 2, 1, 2, 2], decay=0.0)
    lt.limit(12)
    assert lt.sizes() == [6], "a store within its bound is left alone"
    write(lt, 100.0)
    assert lt.sizes() == [10]
    # Ages are now [9, 13, 5, 11, 7, 13] + 4 new at 0. A bound of 8 evicts the 1.0 row (3), then
    # the later of the two oldest (5).
    lt.limit(8)
    assert lt.stored[0].tokens[:, 0].tolist() == [0.0, 1, 2, 4, 100, 101, 102, 103]
    assert lt.frequencies[0].tolist() == [2.0] * 8
    write(lt, 200.0)  # every merge keeps the bound: here the four oldest go
    assert lt.stored[0].tokens[:, 0].tolist() == [100.0, 101, 102, 103, 200, 201, 202, 203]


def test_a_store_at_its_bound_evicts_in_place_without_touching_what_was_saved():
    lt = store(ages=[9, 8, 7, 6, 5, 4, 3, 2], frequencies=[2.0] * 8, decay=0.0)
    lt.limit(8)
    write(lt, 100.0)  # into a buffer with spare rows; the four oldest go
    buffer = lt._buffers[0]["tokens"]
    for first in (200.0, 300.0):
        write(lt, first)
        assert lt._offset(0, "tokens", lt.stored[0].tokens) is not None  # packed in place, no copy
    assert lt.stored[0].tokens[:, 0].tolist() == [200.0, 201, 202, 203, 300, 301, 302, 303]
    saved = lt.state_dict()
    write(lt, 400.0)  # the saved rows are views: this eviction copies instead
    write(lt, 500.0)
    assert saved["ltm.0"][:, 0].tolist() == [200.0, 201, 202, 203, 300, 301, 302, 303]
    assert lt.stored[0].tokens[:, 0].tolist() == [400.0, 401, 402, 403, 500, 501, 502, 503]
    assert lt._buffers[0]["tokens"].data_ptr() != buffer.data_ptr()


def test_an_eviction_in_place_moves_the_kept_rows_before_the_last_evicted_one():
    packed, copied = (store(ages=[9, 1, 8, 7, 2, 3, 5, 6], frequencies=[2.0] * 8, decay=0.0) for _ in range(2))
    for lt in (packed, copied):
        write(lt, 100.0)  # ages now [13, 5, 12, 11, 6, 7, 9, 10] + 4 new rows at 0
    copied.stored[0] = copied.stored[0][torch.arange(12)]  # not a view of its buffer: gathered
    for lt in (packed, copied):
        lt.limit(8)  # the four oldest go: rows 0, 2, 3 and 7
    assert packed._offset(0, "tokens", packed.stored[0].tokens) == 4  # rows 1, 4, 5, 6 moved up to 4..7
    assert packed.stored[0].tokens[:, 0].tolist() == [1.0, 4, 5, 6, 100, 101, 102, 103]
    for a, b in zip(packed.stored[0].tensors(), copied.stored[0].tensors()):
        assert torch.equal(a, b)
    assert torch.equal(packed.frequencies[0], copied.frequencies[0])


def test_a_bound_below_what_a_read_places_is_refused():
    lt = store(ages=[0], frequencies=[1.0])
    with pytest.raises(ValueError, match="below the 8 a read places"):
        lt.limit(7)
    lt.limit(None)
    assert lt.max_tokens is None


@torch.no_grad()
def test_tokens_stay_in_host_memory_and_a_read_moves_only_its_m_tokens():
    model = mplus_tiny()
    for start in (20, 40, 60, 80):
        model.inject(torch.arange(start, start + 10)[None])
    pool = model.pool.clone()
    lt = pool.long_term
    pool.to("meta")  # stands in for an accelerator: no data, only placement
    assert pool.memory.device.type == lt.stored[0].keys.device.type == lt.pool_ages.device.type == "meta"
    assert {rows.tokens.device.type for rows in lt.stored + lt.pending} == {"cpu"}
    assert pool.off_device_nbytes == lt.host_nbytes == sum(r.tokens.nbytes for r in lt.stored + lt.pending) > 0
    chosen = torch.tensor([[0, 3, 5] + [1] * 13])
    picked = lt.tokens(0, chosen, device="meta")
    assert picked.device.type == "meta" and picked.shape == (1, 16, 64)


@torch.no_grad()
def test_an_engine_bounds_every_pool_it_makes_loads_or_writes(tmp_path):
    tokenizer = default_model.load_tokenizer()
    with pytest.raises(ValueError, match="at least the 16"):
        Engine(mplus_tiny(), tokenizer, max_long_term_tokens=15)
    engine = Engine(mplus_tiny(), tokenizer, max_long_term_tokens=16)
    pool = engine.pool("alice")
    for i in range(8):
        pool.inject(f"Note {i}: the deploy key for service {i} is K-{i * 37}.", progress=False)
    assert pool.pool.long_term.sizes() == [16, 16] and pool.pool.long_term.max_tokens == 16
    pool.save(tmp_path / "alice.safetensors")
    assert engine.load_pool(tmp_path / "alice.safetensors").long_term.max_tokens == 16
    unbounded = Engine(engine.model, tokenizer)
    grown = unbounded.new_pool()
    for i in range(8):
        unbounded.write(grown, f"Note {i}: the deploy key for service {i} is K-{i * 37}.", progress=False)
    assert grown.long_term.sizes()[0] > 16
    engine.write(grown, "One more note.", progress=False)  # another engine's pool, under this bound
    assert grown.long_term.sizes() == [16, 16]
