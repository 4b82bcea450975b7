"""The training step on a tiny random model: loss falls, only the adapter learns, export reloads."""

import functools

import pytest
import torch

from memagent import MemoryLLM, default_model
from memagent.model.shapes import shape_config
from memagent.train.adapter import AdapterShape, export_adapter, export_difference, make_trainable, start_from
from memagent.train.episodes import Episode, EpisodeMaker, Schedule, Target
from memagent.train.trainer import TrainConfig, Trainer, episode_loss, some_writes, write_episode


@pytest.fixture(scope="module")
def maker():
    tokenizer = default_model.load_tokenizer()
    return EpisodeMaker(tokenizer, lambda q: f"Q: {q}\nA: ", schedule=Schedule(2, 2, ramp_steps=1), text_tokens=16)


class Repeat:
    """Always the same episode: a task a few steps can learn."""

    def __init__(self, maker: EpisodeMaker, step: int):
        self.maker, self.step, self.tokenizer = maker, step, maker.tokenizer
        self.question_prompt = maker.question_prompt

    def __call__(self, step: int):
        return self.maker(self.step)


def tiny_trainer(maker, run_dir, *, repeat=None, steps=12) -> Trainer:
    model = make_trainable(MemoryLLM.from_random(shape_config("tiny"), seed=0), AdapterShape(rank=4, alpha=8.0))
    episodes = Repeat(maker, repeat) if repeat is not None else maker
    config = TrainConfig(steps=steps, lr=5e-3, warmup_steps=1, checkpoint_every=1000, adapter=AdapterShape(4, 8.0))
    return Trainer(model, episodes, config, run_dir)


def test_loss_decreases_on_a_repeated_episode(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, repeat=3)
    losses = [trainer.train_step()["loss"] for _ in range(10)]
    # A random tiny model's logits are small, so the loss cannot fall far; it must fall steadily.
    assert max(losses[-3:]) < losses[0] - 0.2, losses


def test_only_the_adapter_and_memory_parts_learn(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, repeat=3)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_" in k or k in ("bos_embedding", "new_memory_positional_emb") for k in changed)


def test_gradient_reaches_the_write_pass_through_the_memory(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, repeat=3)
    episode = trainer.episodes(0)
    episode.writes = [(ids, True) for ids, _ in episode.writes]
    loss = episode_loss(trainer.model, episode, 0, 0.0, 0)[0]["qa"]  # answers only: the read needs the writes
    loss.backward()
    assert trainer.model.new_memory_positional_emb.grad.abs().sum() > 0  # used by writes alone


def test_episodes_start_from_the_pool_the_last_one_left(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, repeat=3)
    trainer.config.carry_share = 1.0
    trainer.train_step()
    left = trainer.carried
    assert left is not None and not left.requires_grad
    episode = Episode(writes=[(maker.encode("Project Falcon is led by Marta."), False)])
    pool, _ = write_episode(trainer.model, episode, seed=0, start=left)
    K = trainer.model.config.num_tokens
    kept = (pool.memory[:, : pool.size - K, None] == left[:, None]).all(-1).any(-1)
    assert kept.all()  # one write of K tokens into a full pool keeps N - K of the old ones
    trainer.train_step()  # and the next step trains from it
    assert not torch.equal(trainer.carried, left)


def test_a_read_of_some_writes_holds_the_facts_whole_among_the_best_matches_in_written_order(maker):
    def keys(ids: torch.Tensor) -> torch.Tensor:
        return ids.unique()

    # Writes 1 and 3 are facts; the question shares 9 (rare) with write 2, and 7 with every write.
    writes = [([1, 7], False), ([2, 7], True), ([3, 9, 7], False), ([4, 7], True), ([5, 7], False)]
    episode = Episode(writes=writes, targets=[Target([9, 7], [0], "qa"), Target([5], [0], "text")])
    written = [torch.full((2, 3, 4), float(i)) for i in range(5)]
    earlier = [(torch.full((2, 3, 4), -1.0), torch.tensor([8]))]
    write_keys = [keys(torch.tensor(ids)) for ids, _ in writes]
    memory = some_writes(episode, written, 3, earlier, keys, write_keys)
    assert [int(memory[0, i, 0]) for i in range(0, 9, 3)] == [1, 2, 3], "the facts and write 3, in order"
    memory = some_writes(episode, written, 4, earlier, keys, write_keys)
    assert [int(memory[0, i, 0]) for i in range(0, 12, 3)] == [1, 2, 3, 4], "then the latest of the equals"
    asked_earlier = Episode(writes=[([1], True)], targets=[Target([8], [0], "qa")])
    memory = some_writes(asked_earlier, written[:1], 2, earlier * 2, keys, [torch.tensor([1])])
    assert [int(memory[0, i, 0]) for i in range(0, 6, 3)] == [-1, 0]  # earlier writes come first


def test_reads_of_some_writes_train_the_writes_they_see(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, repeat=3)
    trainer.config.read_share = 1.0
    trainer.train_step()
    trainer.model.zero_grad()
    episode = trainer.episodes(0)
    write_keys = [trainer.keys(torch.tensor(ids)) for ids, _ in episode.writes]
    earlier = list(trainer.earlier)
    read = functools.partial(some_writes, episode, count=2, earlier=earlier, keys=trainer.keys, write_keys=write_keys)
    loss = episode_loss(trainer.model, episode, 0, 0.0, 0, read=read)[0]["qa"]
    loss.backward()
    assert trainer.model.new_memory_positional_emb.grad.abs().sum() > 0
    assert len(trainer.earlier) == len(episode.writes)


def test_a_run_can_start_from_an_exported_adapter_of_its_shape(maker, tmp_path):
    trained = tiny_trainer(maker, tmp_path / "a", repeat=3)
    trained.train_step()
    export_adapter(trained.model, tmp_path / "adapter", lora_dtype=torch.float32)
    fresh = tiny_trainer(maker, tmp_path / "b").model
    start_from(fresh, tmp_path / "adapter")
    for (name, a), b in zip(trained.model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), name
    other = make_trainable(MemoryLLM.from_random(shape_config("tiny"), seed=0), AdapterShape(rank=2, alpha=4.0))
    with pytest.raises(ValueError, match="lora_config"):
        start_from(other, tmp_path / "adapter")


def test_checkpoint_resume_continues_where_it_stopped(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, steps=3)
    trainer.train()
    resumed = tiny_trainer(maker, tmp_path, steps=3)
    assert resumed.resume() and resumed.step == 3
    for (name, a), b in zip(trainer.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    assert (tmp_path / "adapter" / "adapter.safetensors").exists()


def test_a_resumed_run_keeps_the_time_budget_of_the_whole_run(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, steps=2)
    trainer.train()
    resumed = tiny_trainer(maker, tmp_path, steps=10)
    resumed.config.max_minutes = trainer.seconds / 60 / 2  # already spent
    assert resumed.resume() and resumed.seconds == trainer.seconds
    resumed.train()
    assert resumed.step == 2


def test_exported_adapter_reproduces_the_trained_model(maker, tmp_path):
    trainer = tiny_trainer(maker, tmp_path, repeat=5)
    for _ in range(3):
        trainer.train_step()
    export_adapter(trainer.model, tmp_path / "exported", lora_dtype=torch.float32)
    base_state = MemoryLLM.from_random(shape_config("tiny"), seed=0).state_dict()
    ids = torch.tensor([maker.encode("Project Falcon is led by Marta.")])
    assert export_difference(trainer.model, tmp_path / "exported", base_state, ids) < 1e-4


def test_a_read_longer_than_one_prefill_chunk_trains(maker, tmp_path):
    """Rows x tokens beyond PREFILL_QUERY_ROWS: inference prefills such a read in chunks, which
    write the cache in place; a training pass must take it whole, or backward fails."""
    from memagent.model.attention import PREFILL_QUERY_ROWS

    trainer = tiny_trainer(maker, tmp_path, repeat=3)
    ids = torch.randint(3, 100, (5, PREFILL_QUERY_ROWS // 4))
    pool = trainer.model.new_pool()
    pool.write(trainer.model.new_memory(ids[:1, :8], None))
    trainer.model(ids, pool=pool).logits.sum().backward()
    assert trainer.model.bos_embedding.grad.abs().sum() > 0


def test_an_episode_that_writes_nothing_trains_on_an_empty_memory_and_keeps_the_carried_pool(maker, tmp_path):
    blanks = EpisodeMaker(maker.tokenizer, maker.question_prompt, schedule=maker.schedule, text_tokens=16, blank_share=0.5)
    blank = next(step for step in range(100) if not blanks(step).writes)
    written = next(step for step in range(100) if blanks(step).writes)
    trainer = tiny_trainer(blanks, tmp_path, repeat=written)
    trainer.config.read_share = 1.0  # a read of some writes would have none to see
    trainer.train_step()
    left = trainer.carried
    trainer.episodes.step = blank
    before = [p.detach().clone() for p in trainer.params]
    metrics = trainer.train_step()
    assert set(metrics) == {"text", "loss"} and metrics["text"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.params))
    assert trainer.carried is left


def test_a_fresh_adapter_is_drawn_from_its_seed():
    """`memagent train --seed` seeds the LoRA initialisation as well as the episodes, so two runs
    of one seed train alike; drawing it leaves torch's global generator as it was."""

    def fresh(seed: int) -> dict[str, torch.Tensor]:
        model = make_trainable(MemoryLLM.from_random(shape_config("tiny"), seed=0), AdapterShape(4, 8.0), seed)
        return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_A" in name}

    state = torch.get_rng_state()
    first, again, other = fresh(1), fresh(1), fresh(2)
    assert torch.equal(torch.get_rng_state(), state)
    assert first and all(torch.equal(first[name], again[name]) for name in first)
    assert not any(torch.equal(first[name], other[name]) for name in first)
