"""Training the write ranker: its examples, a run on a tiny random model, and the command on the
shipped adapter's copy."""

import re
import shutil

import pytest
import torch

import memagent
from memagent import MemoryLLM, default_model
from memagent.cli import build_parser, main
from memagent.model.shapes import shape_config
from memagent.model.write_ranker import RANKER_FILE, WriteRanker
from memagent.train.ranker import RankerConfig, examples, train_ranker


def test_each_example_holds_its_answer_first_beside_look_alikes_about_the_same_subject():
    drawn = examples("train", 60, RankerConfig(), seed=3)
    assert len(drawn) == 60 and all(len(e.writes) >= 2 for e in drawn)
    assert len({e.writes[0] for e in drawn}) == 60
    person = re.compile(r"\b([A-Z][a-z]+ [A-Z][a-z]+)\b")
    same_subject = 0
    for example in drawn:
        named = person.findall(example.writes[0])
        same_subject += bool(named) and any(named[0] in other for other in example.writes[1:])
    assert same_subject >= 10, "writes about the same person beside the one that answers"
    assert examples("train", 5, RankerConfig(), seed=3) == drawn[:5], "the same seed, the same examples"


def test_the_command_trains_with_the_configs_defaults():
    """`memagent train-ranker`'s defaults (README's chain) and `RankerConfig`'s are one recipe."""
    args = build_parser().parse_args(["train-ranker", "runs/default3/adapter"])
    config = RankerConfig()
    assert (args.examples, args.steps, args.depth, args.seed) == (config.examples, config.steps, config.depth, config.seed)


def test_a_run_on_a_tiny_model_learns_its_training_questions():
    model = MemoryLLM.from_random(shape_config("tiny-writes"), seed=0)
    tokenizer = memagent.load("random:tiny-writes").tokenizer
    config = RankerConfig(examples=8, held_out=4, steps=200, depth=2, dim=16)
    ranker = train_ranker(model, tokenizer, config, progress=False)
    assert ranker.depth == 2 and not ranker.training
    assert not torch.equal(ranker.std, torch.ones_like(ranker.std)), "inputs standardized by training's states"
    right = 0
    for example in examples("train", 8, config, config.seed):
        texts = [example.question, *example.writes]
        ids = [torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        states = ranker.states(model, ids)
        with torch.no_grad():
            right += int(ranker(states[0], states[1:]).argmax() == 0)
    assert right >= 7


def test_the_command_trains_a_ranker_into_the_adapter_folder(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(default_model.ADAPTER_DIR, adapter)
    (adapter / RANKER_FILE).unlink()
    assert main(["train-ranker", str(adapter), "--examples", "4", "--steps", "2", "--depth", "2"]) == 0
    assert "right write first for" in capsys.readouterr().out
    assert WriteRanker.load(adapter).depth == 2


def test_a_depth_past_the_models_layers_is_refused(tmp_path):
    model = MemoryLLM.from_random(shape_config("tiny-writes"), seed=0)
    tokenizer = memagent.load("random:tiny-writes").tokenizer
    with pytest.raises(ValueError, match="depth must be 1 to 2 layers, got 5"):
        train_ranker(model, tokenizer, RankerConfig(examples=2, held_out=1, depth=5), progress=False)
    with pytest.raises(SystemExit):
        main(["train-ranker", str(tmp_path), "--depth", "0"])
