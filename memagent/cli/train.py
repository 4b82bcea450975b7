"""`memagent train` (the default's memory adapter) and `memagent eval` (recall, controls, perplexity)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_RUN_DIR = "runs/default"


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train the embedded default's memory adapter")
    train.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="checkpoints, log and exported adapter go here")
    train.add_argument("--steps", type=int, default=1200)
    train.add_argument("--max-minutes", type=float, default=None, help="stop and export after this much wall time")
    train.add_argument("--num-tokens", type=int, default=64, help="K: memory tokens per write")
    train.add_argument("--num-blocks", type=int, default=16, help="the pool holds N = K * num_blocks tokens")
    train.add_argument("--rank", type=int, default=8, help="LoRA rank")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--max-facts", type=int, default=3, help="facts written per episode at the end of the schedule")
    train.add_argument("--max-distractors", type=int, default=10, help="unrelated writes after the facts, at most")
    train.add_argument("--ramp-steps", type=int, default=500, help="steps over which episodes grow to the maximum")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cuda" if _cuda() else "cpu")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    train.add_argument("--fresh", action="store_true", help="ignore a checkpoint in --run-dir instead of resuming")
    train.set_defaults(run=run_train)

    evaluate = subparsers.add_parser("eval", help="measure recall, retention, controls and perplexity of a model")
    evaluate.add_argument("--adapter", default=None, help="adapter folder (default: the shipped one)")
    evaluate.add_argument("--facts", type=int, default=100, help="held-out facts per measurement")
    evaluate.add_argument("--distractors", default="0,1,5,10,20", help="k values: unrelated writes after the fact")
    evaluate.add_argument("--out", default="docs", help="where eval_results.md/json and eval_retention.png go")
    evaluate.add_argument("--seed", type=int, default=1234)
    evaluate.add_argument("--threads", type=int, default=None)
    evaluate.set_defaults(run=run_eval)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _threads(count: int | None) -> None:
    if count:
        import torch

        torch.set_num_threads(count)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from memagent import default_model
    from memagent.engine import Engine
    from memagent.train import default_trainable
    from memagent.train.adapter import AdapterShape, export_difference
    from memagent.train.episodes import EpisodeMaker, Schedule
    from memagent.train.trainer import TrainConfig, Trainer

    _threads(args.threads)
    config = TrainConfig(
        steps=args.steps, lr=args.lr, max_minutes=args.max_minutes, seed=args.seed,
        schedule=Schedule(args.max_facts, args.max_distractors, args.ramp_steps), adapter=AdapterShape(rank=args.rank, alpha=2.0 * args.rank),
    )
    model = default_trainable(args.num_tokens, args.num_blocks, config.adapter, device=args.device)
    tokenizer = default_model.load_tokenizer()
    engine = Engine(model, tokenizer)
    episodes = EpisodeMaker(tokenizer, engine.question_prompt, seed=args.seed, schedule=config.schedule)
    trainer = Trainer(model, episodes, config, args.run_dir)
    if not args.fresh and trainer.resume():
        print(f"resuming from step {trainer.step}")
    trainer.train()
    sample = torch.tensor([tokenizer("Project Falcon is led by Marta.")["input_ids"]], device=model.device)
    difference = export_difference(model, Path(args.run_dir) / "adapter", default_model.base_state(), sample)
    print(f"the exported adapter reproduces the trained model's logits within {difference:.1e}")
    print(f"adapter exported to {Path(args.run_dir) / 'adapter'}; copy it to {default_model.ADAPTER_DIR} to ship it")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from memagent.evaluation.report import evaluate_default

    _threads(args.threads)
    ks = [int(k) for k in args.distractors.split(",")]
    evaluate_default(args.adapter, facts=args.facts, distractors=ks, out=Path(args.out), seed=args.seed)
    return 0
