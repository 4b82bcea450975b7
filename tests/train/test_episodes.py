"""Episodes: reproducible per step, losses only on what must be predicted."""

import random

import pytest

from memagent import default_model
from memagent.abstention import ABSTENTION, names_in
from memagent.train.corpus import FactSampler
from memagent.train.episodes import NEAR_MISS_FORMS, EpisodeMaker, FactDraw, Schedule, form_of
from memagent.train.varied import EXACT, VariedSampler
from memagent.train.trainer import batch_targets


@pytest.fixture(scope="module")
def maker():
    tokenizer = default_model.load_tokenizer()
    return EpisodeMaker(tokenizer, lambda q: f"Q: {q}\nA: ", schedule=Schedule(max_facts=3, max_distractors=12, ramp_steps=10))


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
                assert answer and (answer in written or answer == ABSTENTION)
                assert answer not in decode(target.prompt)


def test_unrelated_writes_are_mostly_few_and_sometimes_many():
    rng = random.Random(0)
    draws = [Schedule.distractors(rng, 32) for _ in range(2000)]
    assert min(draws) == 0 and max(draws) == 32 - 1 or max(draws) == 32
    assert sorted(draws)[len(draws) // 2] <= 6 and sum(d >= 16 for d in draws) > 100
    assert Schedule.distractors(rng, 0) == 0


def test_a_share_of_episodes_asks_about_a_fact_never_written(maker):
    questions = [t for s in range(200) for t in maker(s).targets if t.kind == "qa"]
    abstentions = [t for t in questions if maker.tokenizer.decode(t.completion[:-1]) == ABSTENTION]
    assert 0.05 < len(abstentions) / len(questions) < 0.4


def _never_told_by_written_names(maker: EpisodeMaker, steps: range) -> list[bool]:
    """For each episode that asks a never-told question: whether the question names only names
    the episode wrote (and asks nothing a written fact's question asks)."""
    decode = maker.tokenizer.decode
    asked = []
    for episode in map(maker, steps):
        *told, never = [target for target in episode.targets if target.kind == "qa"] or [None]
        if never is None or decode(never.completion[:-1]) != ABSTENTION:
            continue
        question = decode(never.prompt).removeprefix("Q: ").removesuffix("\nA: ")
        assert question not in {decode(target.prompt) for target in told}, "not a written fact's question"
        written, names = " ".join(decode(ids) for ids, _ in episode.writes), names_in(question)
        asked.append(bool(names) and all(name in written for name in names))
    return asked


def test_a_share_of_never_told_questions_asks_close_to_a_written_fact(maker):
    options = dict(schedule=maker.schedule, abstain_share=1.0)
    close = EpisodeMaker(maker.tokenizer, maker.question_prompt, near_miss_share=1.0, **options)
    plain = EpisodeMaker(maker.tokenizer, maker.question_prompt, **options)
    # A template fact's subject, or a JSON output's object, asked for what was not written.
    by_written_names = _never_told_by_written_names(close, range(100, 200))
    assert len(by_written_names) > 50 and sum(by_written_names) > 0.3 * len(by_written_names)
    assert sum(_never_told_by_written_names(plain, range(100, 200))) < 0.1 * len(by_written_names)


def _asks_exact_thing_of_another(question: str, fact) -> bool:
    """Whether `question` asks `fact`'s exact string's thing of a subject other than its own."""
    subject = fact.subject.split(":", 1)[1]
    for template in EXACT[fact.relation]["questions"]:
        before, after = template.split("{subject}")
        if question.startswith(before) and question.endswith(after):
            return question[len(before) : len(question) - len(after)] != subject
    return False


def test_near_misses_are_drawn_only_from_the_forms_asked_for():
    rng, asked = random.Random(5), 0
    for seed in range(40):
        draw = FactDraw(FactSampler("train", seed), VariedSampler("train", seed), 0.5, rng)
        written = [f for _ in range(6) for f in draw.write()]
        exact = [f for f in written if form_of(f) == "exact"]
        question = draw.near_miss(written, ["exact"])
        assert (question is None) == (not exact)
        if question is not None:
            asked += 1
            assert any(_asks_exact_thing_of_another(question, fact) for fact in exact)
        assert draw.near_miss([f for f in written if form_of(f) != "template"], ["template"]) is None
    assert asked > 10


def test_near_miss_forms_are_checked():
    with pytest.raises(ValueError, match="near-miss forms must be among template, json, exact, not chat"):
        EpisodeMaker(None, str, near_miss_forms=["exact", "chat"])


def test_the_cli_offers_the_near_miss_forms_episodes_know():
    from memagent.cli import train

    assert train.NEAR_MISS_FORMS == NEAR_MISS_FORMS


def test_each_drawn_fact_differs_in_subject_and_answer_from_every_write():
    rng = random.Random(3)
    for seed in range(40):
        draw = FactDraw(FactSampler("train", seed), VariedSampler("train", seed), 0.5, rng)
        written = [f for _ in range(8) for f in draw.write()]
        never_told = draw.write()[0]  # what an episode asks without writing it
        for fact in written:
            assert fact.subject != never_told.subject and fact.answer != never_told.answer
            assert never_told.answer not in fact.text


def test_varied_forms_make_up_their_share(maker):
    texts = [maker.tokenizer.decode(ids) for s in range(200, 260) for ids, learn in maker(s).writes if learn]
    assert sum(t.startswith(("User: ", '{"')) or "Assistant:" in t for t in texts) > 5


def test_labels_cover_only_completions(maker):
    targets = maker(200).targets
    _, mask, labels = batch_targets(targets, pad_id=0, device="cpu")
    for row, target in enumerate(targets):
        labelled = labels[row][labels[row] != -100].tolist()
        assert labelled == target.completion
        assert mask[row].sum() == len(target.prompt) + len(target.completion)


def test_a_share_of_episodes_writes_nothing_and_predicts_general_text(maker):
    assert all(maker(step).writes for step in range(300)), "none by default"
    blanks = EpisodeMaker(maker.tokenizer, maker.question_prompt, schedule=maker.schedule, blank_share=0.1)
    blank = [e for e in map(blanks, range(300)) if not e.writes]
    assert 0.05 < len(blank) / 300 < 0.15
    assert all(len(e.targets) == 1 and e.targets[0].kind == "text" for e in blank)
