"""Generation: batches with padding match one-by-one runs; sampling options; stop strings; EOS."""

import pytest
import torch

from memagent import MemoryLLM
from memagent.model.shapes import shape_config
from memagent.model.decoding import left_align
from memagent.sampling import SamplingParams
from memagent.text_stream import TextStream


@pytest.fixture(scope="module")
def model():
    m = MemoryLLM.from_random(shape_config("tiny"), seed=0)
    m.inject(torch.arange(100, 140)[None])
    return m


PROMPTS = [[5, 17, 300, 42, 9, 11], [7, 8], [1000, 2000, 3000, 4000]]


def padded(side: str, pad: int = 0):
    width = max(map(len, PROMPTS))
    ids, mask = [], []
    for p in PROMPTS:
        fill = [pad] * (width - len(p))
        ids.append(fill + p if side == "left" else p + fill)
        mask.append([0] * len(fill) + [1] * len(p) if side == "left" else [1] * len(p) + [0] * len(fill))
    return torch.tensor(ids), torch.tensor(mask)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_one_by_one(model, side):
    ids, mask = padded(side)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    for row, prompt in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=8, eos_token_id=[])
        assert batch[row].tolist() == alone[0].tolist()


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_logits_equal_unpadded(model, side):
    ids, mask = padded(side)
    aligned, aligned_mask = left_align(ids, mask, pad_id=0)
    with torch.no_grad():
        logits = model(aligned, aligned_mask).logits
        for row, prompt in enumerate(PROMPTS):
            alone = model(torch.tensor([prompt])).logits[0]
            assert torch.allclose(logits[row, -len(prompt) :], alone, atol=1e-5)


def test_empty_pool_batch_equals_one_by_one():
    model = MemoryLLM.from_random(shape_config("tiny"), seed=2)
    ids, mask = padded("left")
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=[])
    for row, prompt in enumerate(PROMPTS):
        assert batch[row].tolist() == model.generate(torch.tensor([prompt]), max_new_tokens=5, eos_token_id=[])[0].tolist()


def test_sampling_is_reproducible_with_a_seed(model):
    prompt = torch.tensor([PROMPTS[0]])
    options = dict(max_new_tokens=10, do_sample=True, temperature=1.5, eos_token_id=[])
    assert torch.equal(model.generate(prompt, seed=3, **options), model.generate(prompt, seed=3, **options))
    assert not torch.equal(model.generate(prompt, seed=3, **options), model.generate(prompt, seed=4, **options))


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    prompt = torch.tensor([PROMPTS[0]])
    greedy = model.generate(prompt, max_new_tokens=6, eos_token_id=[])
    for options in (dict(top_k=1), dict(top_p=1e-6)):
        sampled = model.generate(prompt, max_new_tokens=6, do_sample=True, seed=1, eos_token_id=[], **options)
        assert torch.equal(sampled, greedy)


def test_eos_ends_a_row_and_pads_it(model):
    prompt = torch.tensor([PROMPTS[0]])
    free = model.generate(prompt, max_new_tokens=6, eos_token_id=[])[0].tolist()
    eos = free[2]
    out = model.generate(prompt, max_new_tokens=6, eos_token_id=[eos])[0].tolist()
    assert out == free[: free.index(eos) + 1]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
    ],
)
def test_bad_sampling_parameters_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**options)


class CharTokenizer:
    """One token per character: enough to test text assembly."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


def run_stream(text: str, stop):
    stream = TextStream(CharTokenizer(), stop)
    pieces = [stream.push(ord(c)) for c in text]
    stopped_by_stop_string = stream.stopped
    return pieces, "".join(pieces) + stream.finish(), stopped_by_stop_string


def test_stop_string_ends_text_before_it():
    pieces, text, stopped = run_stream("Paris.\nQuestion: next", ["\nQuestion:"])
    assert text == "Paris." and stopped


def test_possible_start_of_a_stop_string_is_held_back_then_released():
    pieces, text, stopped = run_stream("a\nb", ["\nQ"])
    assert pieces == ["a", "", "\nb"] and text == "a\nb" and not stopped


def test_end_of_text_releases_a_held_back_tail():
    stream = TextStream(CharTokenizer(), ["\nQ"])
    assert [stream.push(ord(c)) for c in "ok\n"] == ["o", "k", ""]
    assert stream.finish() == "\n" and stream.stopped
    assert stream.push(ord("x")) == "" and stream.finish() == ""
