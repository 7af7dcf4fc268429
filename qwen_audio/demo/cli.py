"""`qwen-audio train-demo`: argument parsing and dispatch only (the work is in recipe.py).

The main CLI calls `add_demo_subcommands(subparsers)`; imports stay light until the command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_demo_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "train-demo",
        help="rebuild the bundled demo model: data, tokenizer, training, fp16 export, eval",
        description="Regenerate the demo model from a seed: data (espeak-ng), tokenizer, "
        "Whisper tiny.en encoder + random decoder, `qwen-audio finetune --full`, fp16 export "
        "and the held-out evals. Needs espeak-ng and `pip install 'qwen-audio[demo,train,eval]'`.",
    )
    p.add_argument("--work", type=Path, default=Path("build/demo"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="data size (1: 19,000 sentences)")
    p.add_argument("--workers", type=int, default=2, help="data generation processes (max 2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the first stage")
    p.add_argument(
        "--encoder-epochs",
        type=int,
        default=None,
        help="epochs of the second stage, with the encoder's layers trained (0: none)",
    )
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--no-eval", action="store_true", help="stop after the fp16 export")
    p.add_argument(
        "--install",
        action="store_true",
        help="copy the model and samples into the package (qwen_audio/assets/)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    from qwen_audio.demo.recipe import RecipeOptions, install, run_recipe

    logging.basicConfig(level=logging.INFO)
    tuned = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("encoder_epochs", args.encoder_epochs),
            ("lr", args.lr),
        )
        if v is not None
    }
    opts = RecipeOptions(
        work=args.work,
        seed=args.seed,
        scale=args.scale,
        workers=args.workers,
        evaluate=not args.no_eval,
        **tuned,
    )
    report = run_recipe(opts)
    if args.install:
        if not opts.evaluate:
            print("error: --install needs the eval (it picks the samples)")
            return 2
        install(opts.work)
    print(json.dumps({k: report.get(k) for k in ("seconds", "eval", "model")}, indent=2))
    return 0
