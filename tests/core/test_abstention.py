"""Abstention: the one answer "I don't know.", and the memory-gain score a rule can use."""

import pytest
import torch

from memagent.abstention import ABSTENTION, is_abstention
from memagent.memory_gain import MemoryGain, answer_logprobs
from tests.abstaining import abstaining_engine


def test_an_abstention_is_i_dont_know_and_nothing_else():
    assert ABSTENTION == "I don't know."
    assert is_abstention("I don't know.") and is_abstention(" i don't know\n") and is_abstention("I DON'T KNOW")
    assert not is_abstention("I don't know, maybe Oslo.") and not is_abstention("Oslo") and not is_abstention("")


def test_ask_returns_the_abstention_as_the_model_says_it():
    pool = abstaining_engine().pool("never-told")
    assert pool.ask("Who drives a red van?") == ABSTENTION
    pool.inject("Raul drives a blue bus.", progress=False)
    assert pool.ask("Who drives a red van?") == ABSTENTION


def test_answer_logprobs_are_the_models_own(tiny_engine):
    pool = tiny_engine.pool("scored")
    pool.inject("Mia lives in Lisbon.", progress=False)
    prompt, answer = tiny_engine.encode("Where does Mia live?"), tiny_engine.encode(" Lisbon")
    ids = torch.tensor([prompt + answer])
    with torch.inference_mode():
        logits = tiny_engine.model(ids, pool=pool.pool).logits[0].float().log_softmax(-1)
    expected = torch.stack([logits[len(prompt) - 1 + i, t] for i, t in enumerate(answer)])
    torch.testing.assert_close(answer_logprobs(tiny_engine.model, pool.pool, prompt, answer), expected)
    with pytest.raises(ValueError, match="at least one token"):
        answer_logprobs(tiny_engine.model, pool.pool, prompt, [])


def test_an_empty_memory_gains_nothing_and_a_written_one_changes_the_answer(tiny_engine):
    gain = MemoryGain(tiny_engine.model)
    prompt, answer = tiny_engine.encode("Where does Mia live?"), tiny_engine.encode(" Lisbon")
    pool = tiny_engine.new_pool()
    assert gain(pool, prompt, answer) == 0.0
    tiny_engine.write(pool, "Mia lives in Lisbon.", progress=False)
    assert gain(pool, prompt, answer) != 0.0
