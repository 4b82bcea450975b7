"""Episodes: reproducible per step, losses only on what must be predicted."""

import pytest

from memagent import default_model
from memagent.train.episodes import EpisodeMaker, Schedule
from memagent.train.trainer import batch_targets


@pytest.fixture(scope="module")
def maker():
    tokenizer = default_model.load_tokenizer()
    return EpisodeMaker(tokenizer, lambda q: f"Q: {q}\nA: ", schedule=Schedule(max_facts=3, max_distractors=4, ramp_steps=10))


def test_an_episode_is_a_function_of_its_step(maker):
    assert maker(7) == maker(7)
    assert maker(7) != maker(8)


def test_the_schedule_grows_facts_and_unrelated_writes():
    schedule = Schedule(max_facts=3, max_distractors=4, ramp_steps=10)
    assert schedule.at(0) == (1, 0)
    assert schedule.at(10) == schedule.at(1000) == (3, 4)


def test_late_episodes_hold_more_writes(maker):
    mean_writes = lambda steps: sum(len(maker(s).writes) for s in steps) / len(steps)
    assert mean_writes(range(1000, 1040)) > mean_writes(range(2)) + 1


def test_answers_are_in_the_writes_not_the_prompts(maker):
    decode = maker.tokenizer.decode
    for step in range(50):
        episode = maker(step)
        written = " ".join(decode(ids) for ids, _ in episode.writes)
        for target in episode.targets:
            if target.kind == "qa":
                answer = decode(target.completion[:-1]).strip()  # the end-of-turn token closes the answer
                assert answer and answer in written
                assert answer not in decode(target.prompt)


def test_labels_cover_only_completions(maker):
    targets = maker(200).targets
    _, mask, labels = batch_targets(targets, pad_id=0, device="cpu")
    for row, target in enumerate(targets):
        labelled = labels[row][labels[row] != -100].tolist()
        assert labelled == target.completion
        assert mask[row].sum() == len(target.prompt) + len(target.completion)
