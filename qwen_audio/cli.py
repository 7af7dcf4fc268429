"""`qwen-audio`: argument parsing and dispatch only; the work lives in the modules it calls.

Nothing heavy is imported to build the parser (no torch, no web server, no trainer), so `--help`
answers at once; each command imports its work when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from .config import MODEL_HELP, CheckpointError

log = logging.getLogger("qwen_audio.cli")  # named so also under `python -m qwen_audio.cli`

# Commands registered by other modules' parsers, and the extra their work needs.
# (module, registering function, extra, the commands it registers)
COMMAND_MODULES = [
    ("qwen_audio.server.cli", "add_serve_subcommand", "server", ("serve",)),
    ("qwen_audio.eval.cli", "add_eval_subcommands", "eval", ("eval",)),
    ("qwen_audio.train.cli", "add_train_subcommands", "train", ("finetune", "export")),
    ("qwen_audio.bench.cli", "add_bench_subcommand", "bench", ("bench",)),
    ("qwen_audio.demo.cli", "add_demo_subcommands", "demo", ("train-demo",)),
]


def add_model_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--model", required=required, help=MODEL_HELP)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        default=None,
        help="store the decoder's weights as int8 or int4 groups (quantized while loading, "
        "one layer at a time; `qwen-audio quantize` saves the result)",
    )
    p.add_argument(
        "--long-audio",
        choices=["split", "truncate", "error"],
        default="split",
        help="audio over 30 s: split into 30 s windows (default), keep the first 30 s, or refuse",
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="a hub id missing from the local cache may be downloaded (off: cache only)",
    )
    p.add_argument(
        "--allow-remote-audio", action="store_true", help="accept http(s) URLs as audio input"
    )


def add_chat_command(sub) -> None:
    p = sub.add_parser("chat", help="answer once, or an interactive voice/text chat")
    add_model_options(p)
    p.add_argument("--audio", action="append", default=[], help="audio file (repeatable)")
    p.add_argument("--prompt", help="text of the user turn")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="base model: --prompt is a raw prompt")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_chat)


def add_transcribe_command(sub) -> None:
    p = sub.add_parser(
        "transcribe", help="transcribe audio files (cut at pauses, all segments in one batch)"
    )
    add_model_options(p)
    p.add_argument("files", nargs="+")
    p.add_argument("--language", help="language code such as en, zh, fr")
    p.add_argument(
        "--format", default="text", choices=["text", "json", "verbose_json", "srt", "vtt"]
    )
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    p.add_argument(
        "--style",
        default="auto",
        choices=["auto", "chat", "base"],
        help="prompt style: Instruct chat or the base model's ASR prompt (auto: from the "
        "checkpoint's chat template and generation config)",
    )
    p.add_argument(
        "--segmentation",
        default="vad",
        choices=["vad", "fixed"],
        help="vad: cut at pauses, no segment for silence (default); fixed: 30 s windows",
    )
    p.add_argument(
        "--max-segment-seconds",
        type=_max_segment_seconds,
        default=20.0,
        help="longest segment with --segmentation vad (at most 30, default 20)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar (there is none either when stderr is not a terminal)",
    )
    p.set_defaults(func=_run_transcribe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-audio",
        description="Run, serve, evaluate and finetune Qwen2-Audio models. Without --model every "
        f"command uses {MODEL_HELP.split('(default: ', 1)[1].rstrip(')')}.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what loading does")
    sub = parser.add_subparsers(dest="command", required=True)
    add_chat_command(sub)
    add_transcribe_command(sub)
    add_quantize_command(sub)
    for module, function, extra, names in COMMAND_MODULES:
        _add_optional(sub, module, function, extra, names)
    for p in _all_subparsers(sub):
        # -v after the command too; SUPPRESS keeps a -v given before it.
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="more logging"
        )
    return parser


def _all_subparsers(sub) -> list[argparse.ArgumentParser]:
    found = []
    for p in dict.fromkeys(sub.choices.values()):  # a parser with aliases appears once
        found.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += _all_subparsers(action)
    return found


def _add_optional(sub, module: str, function: str, extra: str, names: tuple[str, ...]) -> None:
    """Commands whose parser module cannot be imported still show up, under their own names,
    and say what to install."""
    try:
        register = getattr(importlib.import_module(module), function)
    except ImportError as err:
        for name in names:
            p = sub.add_parser(name, help=f"(needs: pip install 'qwen-audio[{extra}]')")
            p.set_defaults(func=lambda args, e=err: _missing_extra(e, args.command, extra))
        return
    register(sub)
    for name in names:
        sub.choices[name].set_defaults(extra=extra)


def _missing_extra(err: ImportError, command: str, extra: str | None) -> int:
    hint = f"pip install 'qwen-audio[{extra}]'" if extra else "pip install 'qwen-audio[all]'"
    print(
        f"error: `qwen-audio {command}` needs the package {err.name!r}, which is not installed; "
        f"install it with: {hint}",
        file=sys.stderr,
    )
    return 2


def _run_chat(args) -> int:
    from .cli_inputs import check_audio, check_sampling

    check_sampling(args)
    args.audio = [
        check_audio(a, long_audio=args.long_audio, allow_remote=args.allow_remote_audio)
        for a in args.audio
    ]
    llm = _load(args)
    from .chat import answer_once, interactive_chat

    if args.prompt is None and not args.audio:
        return interactive_chat(llm, args)
    result = answer_once(llm, args)
    if args.json:
        print(
            json.dumps(
                {
                    "text": result.text,
                    "token_ids": result.token_ids,
                    "finish_reason": result.finish_reason,
                },
                ensure_ascii=False,
            )
        )
    return 0


def add_quantize_command(sub) -> None:
    p = sub.add_parser(
        "quantize", help="write an int8/int4 copy of a checkpoint that loads in seconds"
    )
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--method", choices=["int8", "int4"], required=True)
    p.add_argument("--output", required=True, help="folder to write")
    p.set_defaults(func=_run_quantize)


def _run_quantize(args) -> int:
    from pathlib import Path

    from .loading import load_checkpoint, save_quantized

    checkpoint = load_checkpoint(args.model, quantize=args.method)
    out = save_quantized(checkpoint, Path(args.output))
    size = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    print(f"wrote {out} ({args.method}, {size / 2**30:.2f} GiB of weights)")
    return 0


def _max_segment_seconds(text: str) -> float:
    from .asr.segment import max_segment_seconds

    return max_segment_seconds(text)


def _run_transcribe(args) -> int:
    from .cli_inputs import check_audio

    # Segments of at most 30 s are cut here, so --long-audio does not apply to transcription.
    args.files = [check_audio(f, allow_remote=args.allow_remote_audio) for f in args.files]
    llm = _load(args)
    from .transcribe import transcribe_files

    return transcribe_files(llm, args)


def _load(args):
    from .config import default_model
    from .llm import LLM

    model = default_model(args.model)
    log.info("loading %s", model)
    return LLM(
        model,
        dtype=args.dtype,
        device=args.device,
        quantize=args.quantize,
        long_audio=args.long_audio,
        allow_download=args.allow_download,
        allow_remote_audio=args.allow_remote_audio,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .cli_inputs import cli_words

    try:
        return int(args.func(args) or 0)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        # Bad input (a file, a field, a limit): one clear line, not a traceback.
        print(f"error: {cli_words(str(err))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        # An extra's package (fastapi, peft, ...) that the command imports when it runs.
        if (err.name or "").split(".")[0] == "qwen_audio":
            raise
        return _missing_extra(err, args.command, getattr(args, "extra", None))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
