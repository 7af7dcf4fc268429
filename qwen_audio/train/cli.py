"""`qwen-audio finetune` and `qwen-audio export`: argument parsing and dispatch only.

The package's main CLI calls `add_train_subcommands(subparsers)`; each subcommand stores its
handler in `func` (`args.func(args)` returns the exit code). `python -m qwen_audio.train ...`
runs the same commands, which is what `torchrun` / `accelerate launch -m` start:

    torchrun --nproc_per_node 2 -m qwen_audio.train finetune --model M --data D --output O
    accelerate launch --config_file "$(python -m qwen_audio.train config ddp)" \\
        -m qwen_audio.train finetune ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config import MODEL_HELP, default_model
from .configs import ACCELERATE_CONFIGS, config_path

log = logging.getLogger(__name__)


def add_train_subcommands(subparsers) -> None:
    ft = subparsers.add_parser(
        "finetune",
        help="LoRA, full or DPO finetuning on a JSONL data file",
        description="Finetune Qwen2-Audio: LoRA (default), full, or DPO on preference pairs.",
    )
    add_finetune_arguments(ft)
    ft.set_defaults(func=run_finetune)

    ex = subparsers.add_parser(
        "export",
        help="merge a LoRA adapter into a full checkpoint, or rewrite an adapter for peft",
        description="With --merge: base + adapter -> a full hub-layout checkpoint. Without: "
        "rewrite the adapter with the names peft uses on transformers 5.",
    )
    ex.add_argument("--model", help=f"base {MODEL_HELP}")
    ex.add_argument("--adapter", required=True, type=Path, help="PEFT LoRA adapter folder")
    ex.add_argument("--output", required=True, type=Path, help="folder to write")
    ex.add_argument("--merge", action="store_true", help="write a merged full checkpoint")
    ex.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype of the merged weights (auto: the base checkpoint's)",
    )
    ex.set_defaults(func=run_export)


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"base {MODEL_HELP}")
    p.add_argument("--data", required=True, type=Path, help="JSONL training rows")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lora", action="store_true", help="LoRA adapters (the default)")
    mode.add_argument("--full", action="store_true", help="train every LM weight")
    p.add_argument(
        "--dpo", action="store_true", help="DPO on chosen/rejected pairs (LoRA unless --full)"
    )
    p.add_argument("--dpo-beta", type=float, default=0.1)

    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (over epochs)")
    g.add_argument("--lr", type=float, default=None, help="peak rate (1e-4 LoRA, 1e-5 full)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--warmup-ratio", type=float, default=0.03)
    g.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
    g.add_argument("--min-lr-ratio", type=float, default=0.0)
    g.add_argument("--batch-size", type=int, default=1, help="rows per micro-batch and process")
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="0: no clipping")
    g.add_argument("--max-length", type=int, default=None, help="longest sequence, in tokens")
    g.add_argument("--seed", type=int, default=42)

    g = p.add_argument_group("LoRA and trained parts")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=32.0)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument(
        "--lora-targets",
        default=None,
        help="regex, full match on module names such as language_model.model.layers.0.mlp.up_proj "
        "(default: every linear layer of the LM: q/k/v/o_proj, gate/up/down_proj)",
    )
    g.add_argument(
        "--lora-encoder",
        action="store_true",
        help="LoRA on the audio encoder's linear layers too",
    )
    g.add_argument("--rslora", action="store_true", help="scale by alpha / sqrt(r)")
    g.add_argument("--train-projector", action="store_true", help="train the projector fully")
    g.add_argument("--train-encoder", action="store_true", help="train the audio encoder fully")
    g.add_argument(
        "--train-encoder-layers",
        type=int,
        default=0,
        metavar="N",
        help="train the audio encoder's top N layers and final norm fully; works with "
        "--cache-encoder, which then keeps the frozen layers' output",
    )

    g = p.add_argument_group("memory and speed")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="dtype of the frozen base weights (auto: bf16 for LoRA on CUDA, else float32)",
    )
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument(
        "--cache-encoder",
        action="store_true",
        help="keep the frozen audio encoder's output of every clip in memory: each clip is "
        "encoded once per run, not once per row and epoch (with --train-encoder-layers: the "
        "frozen layers' output)",
    )
    g.add_argument("--num-workers", type=int, default=0, help="data loader processes")
    g.add_argument("--cache-mb", type=int, default=1024, help="memory for rendered rows")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    g = p.add_argument_group("checkpoints, data checks and logs")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps")
    g.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    g.add_argument("--skip-bad", action="store_true", help="train on the good rows only")
    g.add_argument("--log-every", type=int, default=1)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-tensorboard", action="store_true")


def options_from_args(args: argparse.Namespace):
    from .dpo import DPOOptions
    from .lora import LM_LINEAR, LoRAOptions
    from .trainer import TrainOptions

    lr = args.lr if args.lr is not None else (1e-5 if args.full else 1e-4)
    return TrainOptions(
        model=default_model(args.model),
        data=args.data,
        output=args.output,
        full=args.full,
        dpo=args.dpo,
        lora=LoRAOptions(
            r=args.lora_r,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            targets=args.lora_targets or LM_LINEAR,
            encoder=args.lora_encoder,
            use_rslora=args.rslora,
        ),
        dpo_options=DPOOptions(beta=args.dpo_beta),
        train_projector=args.train_projector,
        train_encoder=args.train_encoder,
        train_encoder_layers=args.train_encoder_layers,
        epochs=args.epochs,
        max_steps=args.max_steps,
        lr=lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        warmup_ratio=args.warmup_ratio,
        schedule=args.schedule,
        min_lr_ratio=args.min_lr_ratio,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        max_length=args.max_length,
        bf16=args.bf16,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        cache_encoder=args.cache_encoder,
        seed=args.seed,
        save_every=args.save_every,
        keep_last=args.keep_last,
        resume=args.resume,
        skip_bad=args.skip_bad,
        num_workers=args.num_workers,
        cache_mb=args.cache_mb,
        device=args.device,
        log_every=args.log_every,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
    )


def run_finetune(args: argparse.Namespace) -> int:
    from .data import DataError
    from .trainer import finetune

    try:
        result = finetune(options_from_args(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.main and result.losses:
        print(
            f"done: {result.steps} steps, last loss {result.losses[-1]:.4f}, output {result.output}"
        )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..model.loader import resolve_model_path
    from .export import convert_adapter, export_merged

    model = resolve_model_path(default_model(args.model))
    if args.merge:
        out = export_merged(model, args.adapter, args.output, dtype=args.dtype)
    else:
        out = convert_adapter(args.adapter, args.output, base_model=str(args.model or model))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_audio.train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_subcommands(sub)
    cfg = sub.add_parser("config", help="print the path of a shipped accelerate config")
    cfg.add_argument("name", choices=sorted(ACCELERATE_CONFIGS))
    cfg.set_defaults(func=lambda a: print(config_path(a.name)) or 0)
    args = parser.parse_args(argv)
    return args.func(args)
