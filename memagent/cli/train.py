"""`memagent train` (the default's memory adapter) and `memagent eval` (recall, controls, perplexity)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_RUN_DIR = "runs/default"
AUTO = "auto"
NEAR_MISS_FORMS = ("template", "json", "exact")  # memagent.train.episodes's, without importing torch to parse


def register(subparsers) -> None:
    # The defaults are README's training command ("Train it").
    train = subparsers.add_parser(
        "train",
        help="train the embedded default's memory adapter",
        description="Train the memory adapter of the embedded default (SmolLM2-135M-Instruct): LoRA on its "
        "projections plus the memory parts, on episodes that write facts, then unrelated text, then ask "
        "(and ask about facts never written, to answer \"I don't know.\"); reads see the few whole writes "
        "that best match their questions, as the default's long-term memory recalls them (with --long-term "
        "tokens, M+'s kind: then a retriever is trained too, on streams of facts and text the trained model "
        "writes). "
        "Resumes from --run-dir; exports the adapter to RUN_DIR/adapter. Uses CUDA when present.",
    )
    train.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="checkpoints, log and exported adapter go here")
    train.add_argument("--steps", type=int, default=900, help="optimizer steps in all")
    train.add_argument(
        "--max-minutes", type=float, default=80,
        help="wall time in all: with --long-term tokens the adapter stops early enough to leave --retriever-minutes",
    )  # fmt: skip
    train.add_argument(
        "--long-term", choices=("writes", "tokens"), default="writes",
        help="the exported model's long-term memory: whole writes (recalling --read-writes per read) or M+'s tokens",
    )  # fmt: skip
    train.add_argument("--retriever-minutes", type=float, default=9, help="wall time of the retriever phase (tokens)")
    train.add_argument("--num-tokens", type=int, default=64, help="K: memory tokens per write")
    train.add_argument("--num-blocks", type=int, default=16, help="the pool holds N = K * num_blocks tokens")
    train.add_argument("--rank", type=int, default=8, help="LoRA rank")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    train.add_argument("--max-facts", type=int, default=3, help="facts written per episode at the end of the schedule")
    train.add_argument(
        "--max-distractors", type=int, default=12,
        help="unrelated writes after the facts, at most (drawn log-uniformly from 0 to the schedule's limit)",
    )  # fmt: skip
    train.add_argument("--ramp-steps", type=int, default=300, help="steps over which episodes grow to the maximum")
    train.add_argument("--varied-share", type=float, default=0.5, help="share of facts in the varied forms (train/varied.py)")
    train.add_argument(
        "--abstain-share", type=float, default=0.3,
        help="share of fact episodes that also ask about a fact never written (answer: \"I don't know.\")",
    )  # fmt: skip
    train.add_argument(
        "--near-miss-share", type=float, default=0.0,
        help="share of those questions close to a written fact: its subject for what was not written, "
        "a field its JSON output did not report, its exact string's thing of another subject",
    )  # fmt: skip
    train.add_argument(
        "--near-miss-forms", nargs="+", choices=NEAR_MISS_FORMS, default=list(NEAR_MISS_FORMS),
        help="the forms of written facts such questions are close to: template relations, JSON outputs, exact strings",
    )  # fmt: skip
    train.add_argument(
        "--blank-share", type=float, default=0.0,
        help="share of episodes that write nothing and predict general text from an empty memory",
    )  # fmt: skip
    train.add_argument(
        "--carry-share", type=float, default=0.9,
        help="share of episodes that start from the pool the previous episode left instead of an empty one",
    )  # fmt: skip
    train.add_argument(
        "--read-share", type=float, default=1.0,
        help="share of reads that see --read-writes whole writes (the facts' among the best matches of the "
        "questions, as the default's long-term memory recalls them) instead of the pool",
    )  # fmt: skip
    train.add_argument(
        "--read-writes", type=_at_least(1), default=4,
        help="writes such a read sees, and a read of the exported long-term memory of whole writes recalls",
    )  # fmt: skip
    train.add_argument(
        "--start", default=None,
        help="an exported adapter to train on from (e.g. memagent/default_adapter), instead of a fresh one",
    )  # fmt: skip
    train.add_argument("--seed", type=int, default=0, help="episodes and initialisation")
    train.add_argument("--device", default=AUTO, help=f"cpu, cuda, or {AUTO} (cuda when present)")
    train.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    train.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --run-dir instead of resuming")
    train.set_defaults(run=run_train)

    ranker = subparsers.add_parser(
        "train-ranker",
        help="train the write ranker of an exported adapter",
        description="Train the ranker that orders the recalled writes about a question's subject by how well each "
        "answers it (memagent/model/write_ranker.py), on the generator's facts beside look-alikes about the same "
        "subject, with the adapter's model frozen. Writes ADAPTER/ranker.safetensors; reads use it from then on.",
    )
    ranker.add_argument("adapter", help="an exported adapter folder (e.g. runs/default3/adapter)")
    ranker.add_argument("--examples", type=_at_least(1), default=2800, help="training questions")
    ranker.add_argument("--steps", type=_at_least(1), default=1500, help="optimizer steps (states are computed once)")
    ranker.add_argument("--depth", type=_at_least(1), default=18, help="layers whose hidden states the ranker reads")
    ranker.add_argument("--seed", type=int, default=0, help="facts and initialisation")
    ranker.add_argument("--device", default=AUTO, help=f"cpu, cuda, or {AUTO} (cuda when present)")
    ranker.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    ranker.set_defaults(run=run_train_ranker)

    evaluate = subparsers.add_parser(
        "eval",
        help="measure recall, retention, controls and perplexity of a model",
        description="Evaluate a memory adapter on held-out facts written as one stream: recall after k later "
        "writes, with and without its long-term memory, never-told questions, the outside set, the base-model "
        "controls, and held-out prose perplexity. Writes eval_results.md, eval_results.json and "
        "eval_retention.png to --out.",
    )
    evaluate.add_argument("--adapter", default=None, help="adapter folder (default: the shipped one)")
    evaluate.add_argument(
        "--facts", type=_at_least(1), default=40,
        help="held-out facts per measurement (the default fits the whole run in about 25 minutes on 2 CPU cores)",
    )  # fmt: skip
    evaluate.add_argument(
        "--distractors", type=_counts, default="0,1,5,10,20,50,100,200",
        help="comma-separated k values, e.g. 0,5,10: writes after the fact, one measurement each",
    )  # fmt: skip
    evaluate.add_argument("--gap", type=_at_least(0), default=1, help="unrelated writes between consecutive facts of a stream")
    evaluate.add_argument("--out", default="docs", help="where eval_results.md/json and eval_retention.png go")
    evaluate.add_argument("--seed", type=int, default=1234, help="which held-out facts and distractors")
    evaluate.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    evaluate.set_defaults(run=run_eval)


def _counts(text: str) -> list[int]:
    """'0,1,5' -> [0, 1, 5]; anything else is a usage error naming the format."""
    try:
        counts = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated whole numbers, e.g. 0,5,10") from None
    if any(k < 0 for k in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: counts of writes cannot be negative")
    return counts


def _at_least(minimum: int):
    """A whole number of at least `minimum`; anything else is a usage error saying so."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {minimum}")
        return int(text)

    return parse


def _device(name: str) -> str:
    if name != AUTO:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _threads(count: int | None) -> None:
    if count:
        import torch

        torch.set_num_threads(count)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from memagent import default_model
    from memagent.engine import Engine
    from memagent.train import default_trainable
    from memagent.train.adapter import AdapterShape, export_adapter, export_difference
    from memagent.train.episodes import EpisodeMaker, Schedule
    from memagent.train.retriever import (
        DEFAULT_LONG_TERM,
        RetrieverConfig,
        export_with_long_term,
        train_retriever,
        whole_writes,
    )
    from memagent.train.trainer import TrainConfig, Trainer

    _threads(args.threads)
    retriever_minutes = args.retriever_minutes if args.long_term == "tokens" else 0
    config = TrainConfig(
        steps=args.steps, lr=args.lr, max_minutes=args.max_minutes - retriever_minutes, seed=args.seed,
        carry_share=args.carry_share, read_share=args.read_share, read_writes=args.read_writes,
        schedule=Schedule(args.max_facts, args.max_distractors, args.ramp_steps),
        adapter=AdapterShape(rank=args.rank, alpha=2.0 * args.rank),
    )
    model = default_trainable(
        args.num_tokens, args.num_blocks, config.adapter, seed=args.seed, device=_device(args.device), start=args.start
    )
    tokenizer = default_model.load_tokenizer()
    engine = Engine(model, tokenizer)
    episodes = EpisodeMaker(
        tokenizer, engine.question_prompt, seed=args.seed, schedule=config.schedule,
        varied_share=args.varied_share, abstain_share=args.abstain_share, blank_share=args.blank_share,
        near_miss_share=args.near_miss_share, near_miss_forms=args.near_miss_forms,
    )  # fmt: skip
    trainer = Trainer(model, episodes, config, args.run_dir)
    if not args.fresh and trainer.resume():
        print(f"resuming from step {trainer.step}")
    trainer.train()
    adapter = export_adapter(model, Path(args.run_dir) / "adapter")
    sample = torch.tensor([tokenizer("Project Falcon is led by Marta.")["input_ids"]], device=model.device)
    difference = export_difference(model, adapter, default_model.base_state(), sample)
    print(f"the exported adapter reproduces the trained model's logits within {difference:.1e}")

    if args.long_term == "writes":
        export_with_long_term(adapter, whole_writes(args.read_writes))
    else:
        trained, _ = default_model.load_default(adapter, device=model.device)
        retriever_config = RetrieverConfig(minutes=retriever_minutes, seed=args.seed)
        retriever = train_retriever(trained, episodes, DEFAULT_LONG_TERM, retriever_config, args.run_dir, resume=not args.fresh)
        export_with_long_term(adapter, DEFAULT_LONG_TERM, retriever)
    print(f"adapter exported to {adapter}; copy it to {default_model.ADAPTER_DIR} to ship it")
    return 0


def run_train_ranker(args: argparse.Namespace) -> int:
    from memagent import default_model
    from memagent.train.ranker import RankerConfig, train_ranker

    _threads(args.threads)
    model, tokenizer = default_model.load_default(args.adapter, device=_device(args.device))
    config = RankerConfig(examples=args.examples, steps=args.steps, depth=args.depth, seed=args.seed)
    path = train_ranker(model, tokenizer, config).save(args.adapter)
    print(f"ranker saved to {path}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from memagent.evaluation.report import evaluate_default

    _threads(args.threads)
    evaluate_default(
        args.adapter, facts=args.facts, distractors=args.distractors, gap=args.gap, out=Path(args.out), seed=args.seed
    )
    return 0
