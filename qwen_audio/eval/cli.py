"""`qwen-audio eval ...`: argument parsing and the commands (the work is in runner.py, score.py
and report.py).

The main CLI calls `add_eval_subcommands(subparsers)` and then `args.func(args)`, which returns
the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..config import MODEL_HELP, default_model

if TYPE_CHECKING:
    from .score import ScoreReport
    from .tasks import Task


def add_eval_subcommands(subparsers) -> None:
    """Register `eval run`, `eval score` and `eval tasks` under the main parser's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="reproduce the published benchmarks",
        description="Evaluate Qwen2-Audio with the original benchmark protocols.",
    )
    sub = p.add_subparsers(dest="eval_command", metavar="{run,score,tasks}")
    sub.required = True

    run = sub.add_parser("run", help="predict a benchmark, then score it and write reports")
    run.add_argument("--task", required=True, help="a task name (see `qwen-audio eval tasks`)")
    run.add_argument("--data", required=True, help="data folder or file of the task")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--model", help=f"{MODEL_HELP}; run with our engine")
    source.add_argument("--server", help="OpenAI-compatible server URL, e.g. http://host:8000/v1")
    run.add_argument("--server-model", help="model name to request (default: the server's first)")
    run.add_argument("--output", required=True, help="folder for predictions and reports")
    run.add_argument("--batch-size", type=int, default=8, help="samples per engine batch "
                     "(requests in flight with --server)")  # fmt: skip
    run.add_argument("--limit", type=int, help="evaluate the first N rows only")
    run.add_argument("--prompt", help="prompt for every row; may use {prompt} (the row's own)")
    run.add_argument(
        "--prompt-variant",
        choices=("base", "instruct"),
        default="base",
        help="instruct: Instruct-style ASR/S2TT prompts in the chat template",
    )
    run.add_argument("--max-tokens", type=int, default=256)
    run.add_argument("--device", help="cpu, cuda, cuda:1 (default: this rank's GPU, else cpu)")
    run.add_argument("--dtype", default="auto")
    run.add_argument("--quantize", choices=["int8", "int4"], help="int8/int4 decoder weights")
    _add_generic_args(run)
    _add_judge_args(run)
    run.set_defaults(func=_run)

    score = sub.add_parser(
        "score",
        help="score a predictions file (rows with gt, response, source)",
        description="Print a table and, as the last line, one JSON object {source: metric}.",
    )
    score.add_argument("--task", required=True)
    score.add_argument("--predictions", required=True, help="JSONL (or JSON list) of results")
    score.add_argument("--output", help="also write metrics.json, report.md and report.png here")
    _add_generic_args(score)
    _add_judge_args(score)
    score.set_defaults(func=_score)

    tasks = sub.add_parser("tasks", help="list the tasks, where their data goes, their rows")
    tasks.add_argument("name", nargs="?", help="one task")
    tasks.set_defaults(func=_tasks)


def _add_generic_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", choices=("wer", "cer", "bleu", "acc"), help="generic task only")
    p.add_argument("--language", help="generic task WER/CER language: en, fr, zh, yue, ...")


def _add_judge_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge (AIR-Bench chat)")
    g.add_argument("--judge-url", help="OpenAI-compatible API base URL")
    g.add_argument("--judge-model", help="judge model name, e.g. gpt-4-0125-preview")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key")  # fmt: skip
    g.add_argument("--judge-concurrency", type=int, default=8)


def _judge_config(args):
    if not args.judge_url and not args.judge_model:
        return None
    if not (args.judge_url and args.judge_model):
        raise ValueError("--judge-url and --judge-model go together")
    from .judge import JudgeConfig

    return JudgeConfig(
        url=args.judge_url,
        model=args.judge_model,
        api_key_env=args.judge_key_env,
        concurrency=args.judge_concurrency,
    )


def _run(args) -> int:
    from .runner import run_eval

    return _guard(
        lambda: run_eval(
            args.task,
            args.data,
            args.output,
            model=None if args.server else str(default_model(args.model)),
            server_url=args.server,
            server_model=args.server_model,
            batch_size=args.batch_size,
            limit=args.limit,
            prompt_override=args.prompt,
            prompt_variant=args.prompt_variant,
            max_tokens=args.max_tokens,
            device=args.device,
            dtype=args.dtype,
            quantize=args.quantize,
            metric=args.metric,
            language=args.language,
            judge=_judge_config(args),
        )
    )


def _score(args) -> int:
    from .tasks import get_task

    return _guard(
        lambda: score_file(
            get_task(args.task, metric=args.metric, language=args.language),
            args.predictions,
            judge=_judge_config(args),
            output_dir=args.output,
        )
    )


def _tasks(args) -> int:
    from .tasks import TASKS, get_task

    def show():
        for task in [get_task(args.name)] if args.name else TASKS.values():
            print(task.data_help() + "\n")

    return _guard(show)


def score_file(
    task: Task | str,
    predictions: str | os.PathLike,
    *,
    judge=None,
    output_dir: str | os.PathLike | None = None,
    stream: TextIO | None = None,
) -> ScoreReport:
    """`qwen-audio eval score`: print the table, and as the last line one JSON object
    {source: metric}. With `output_dir`, also write metrics.json, report.md and report.png."""
    from .report import format_table, write_reports
    from .score import read_predictions, score_report

    stream = stream or sys.stdout
    rows = read_predictions(predictions)
    cache = Path(output_dir) / "judge.jsonl" if output_dir is not None else None
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    report = score_report(task, rows, judge=judge, judge_cache=cache, progress=True)
    if output_dir is not None:
        write_reports(report, output_dir)
    print(format_table(report), file=stream)
    if report.judge is not None and report.judge.failed:
        print(f"judge: {report.judge.failed} judgements failed and were left out", file=stream)
    print(json.dumps(report.values(), ensure_ascii=False), file=stream, flush=True)
    return report


def _guard(fn) -> int:
    """Run a command; user errors print one clear message instead of a traceback."""
    from .tasks import DataError

    try:
        fn()
    except (DataError, ValueError, KeyError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
