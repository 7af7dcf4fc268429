"""`qwen-audio eval run`: predict a benchmark with our engine or a server, then score and report.

Resumable: every finished sample is appended (and flushed) to `predictions.jsonl` as it finishes;
a restarted run skips the ids already there and ends with the same metrics.

Data parallel under `torchrun`: rank r predicts rows i with i % world_size == r into its own
`predictions.part{r}.jsonl` (gloo on CPU, nccl on GPU); after a barrier rank 0 merges the parts
into `predictions.jsonl` in dataset order, scores, and writes metrics.json, report.md and
report.png.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .data import load_rows
from .predictors import MAX_TOKENS, EvalRequest, LLMPredictor, PredictFn, ServerPredictor
from .tasks import EvalRow, get_task, resolve_prompt

PREDICTIONS = "predictions.jsonl"


# --------------------------------------------------------------------------- distribution


class _Dist:
    """The torchrun environment: rank, world size, barrier. One process when not launched so."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.created = False
        if self.world > 1:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                if backend == "nccl":
                    torch.cuda.set_device(self.local_rank)
                # Shards finish at different times: the barrier must outwait the slowest one.
                dist.init_process_group(backend, timeout=timedelta(hours=12))
                self.created = True

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()


# --------------------------------------------------------------------------- prediction files


def _read_rows(path: Path) -> list[dict]:
    """Rows of a predictions file; lines cut by an interruption are skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "id" in row:
                rows.append(row)
    return rows


def _prediction_files(out: Path) -> list[Path]:
    return [out / PREDICTIONS, *sorted(out.glob("predictions.part*.jsonl"))]


def _repair_tail(path: Path) -> None:
    """Drop a last line left without its newline by a kill, so appending stays line-aligned."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _merge(out: Path, order: list[str]) -> list[dict]:
    """Gather every prediction file into predictions.jsonl (dataset order); return `order`'s rows."""
    by_id: dict[str, dict] = {}
    parts = _prediction_files(out)
    for path in parts:
        for row in _read_rows(path):
            by_id.setdefault(str(row["id"]), row)
    wanted = set(order)
    rows = [by_id[i] for i in order if i in by_id]
    rows += [r for i, r in by_id.items() if i not in wanted]  # from an earlier, larger run
    tmp = out / (PREDICTIONS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out / PREDICTIONS)
    for path in parts[1:]:
        path.unlink()
    return [by_id[i] for i in order if i in by_id]


def _prediction_row(row: EvalRow, request: EvalRequest, response: str) -> dict:
    return {
        **row.extra,
        "id": row.id,
        "source": row.source,
        "gt": row.gt,
        "response": response,
        "audio_path": row.audio,
        "prompt": request.prompt,
    }


def _predictions(predictor, requests: list[EvalRequest]) -> Iterator[tuple[int, str]]:
    if hasattr(predictor, "iter_completed"):
        yield from predictor.iter_completed(requests)
        return
    texts = predictor(requests)
    if len(texts) != len(requests):
        raise RuntimeError(f"predictor returned {len(texts)} texts for {len(requests)} requests")
    yield from enumerate(texts)


# --------------------------------------------------------------------------- the run


@dataclass
class EvalResult:
    task: str
    output_dir: Path
    metrics: dict[str, float | None] | None  # {source: metric} on rank 0 once scored, else None
    predicted: int  # samples this process predicted in this run
    total: int  # samples in the evaluated set (all ranks)


def run_eval(
    task: str,
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    model: str | None = None,
    server_url: str | None = None,
    predict_fn: PredictFn | None = None,
    server_model: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    prompt_override: str | None = None,
    prompt_variant: str = "base",
    max_tokens: int = MAX_TOKENS,
    device: str | None = None,
    dtype: str = "auto",
    quantize: str | None = None,
    metric: str | None = None,
    language: str | None = None,
    judge=None,
    progress: bool = True,
) -> EvalResult:
    """Predict `task` on the rows found in `data` and score them into `output_dir`.

    Exactly one predictor: `model` (a checkpoint folder for `qwen_audio.LLM`), `server_url`
    (an OpenAI-compatible server) or `predict_fn` (any callable: list[EvalRequest] -> list[str]).
    `judge` (a JudgeConfig) scores AIR-Bench chat; without it chat runs stop after predicting.
    """
    if sum(x is not None for x in (model, server_url, predict_fn)) != 1:
        raise ValueError("give exactly one of model, server_url or predict_fn")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    spec = get_task(task, metric=metric, language=language)
    rows = load_rows(spec, data, limit)
    requests = {
        r.id: EvalRequest(r.id, r.audio, *resolve_prompt(spec, r, variant=prompt_variant,
                                                          override=prompt_override))
        for r in rows
    }  # fmt: skip
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, {
        "task": spec.name, "predictor": model or server_url or "custom",
        "prompt_variant": prompt_variant, "prompt_override": prompt_override,
        "max_tokens": max_tokens,
    })  # fmt: skip

    dist = _Dist()
    try:
        shard = [r for i, r in enumerate(rows) if i % dist.world == dist.rank]
        done = {str(r["id"]) for p in _prediction_files(out) for r in _read_rows(p)}
        pending = [r for r in shard if r.id not in done]
        predicted = 0
        if pending:
            if predict_fn is not None:
                predictor = predict_fn
            elif server_url is not None:
                predictor = ServerPredictor(server_url, model=server_model,
                                            max_tokens=max_tokens, concurrency=batch_size)  # fmt: skip
            else:
                predictor = _load_llm(model, device=device, dtype=dtype, dist=dist,
                                      max_tokens=max_tokens, quantize=quantize)  # fmt: skip
            one = dist.world == 1
            predicted = _predict_shard(
                predictor,
                [requests[r.id] for r in pending],
                {r.id: r for r in pending},
                path=out / (PREDICTIONS if one else f"predictions.part{dist.rank}.jsonl"),
                bar=_progress_bar(spec.name if one else f"{spec.name} [rank {dist.rank}]",
                                  len(shard), len(shard) - len(pending), dist.rank, progress),
                batch_size=batch_size,
            )  # fmt: skip
        dist.barrier()
        metrics = None
        if dist.rank == 0:
            merged = _merge(out, [r.id for r in rows])
            if len(merged) != len(rows):
                raise RuntimeError(f"{len(rows) - len(merged)} predictions are missing in {out}")
            name = model or server_url or "custom"
            metrics = _score_and_report(spec, merged, out, judge, name, progress)
        dist.barrier()
        return EvalResult(spec.name, out, metrics, predicted, len(rows))
    finally:
        dist.close()


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to resume into a folder whose predictions were made with other settings."""
    path = out / "run.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise ValueError(
                f"{out} holds predictions made with other settings ({', '.join(changed)}); "
                "use another --output, or delete it to start over"
            )
        return
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _load_llm(model: str, *, device, dtype, dist, max_tokens, quantize=None) -> LLMPredictor:
    import torch

    from qwen_audio import LLM

    if device is None:
        device = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
    llm = LLM(model, dtype=dtype, device=device, quantize=quantize)
    return LLMPredictor(llm, max_tokens=max_tokens)


def _progress_bar(desc: str, total: int, done: int, position: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="sample", position=position,
                disable=not enabled, file=sys.stderr)  # fmt: skip


def _predict_shard(predictor, requests: list[EvalRequest], rows: dict[str, EvalRow], *,
                   path: Path, bar, batch_size: int) -> int:  # fmt: skip
    """Predict `requests` in batches, appending each finished row to `path` at once."""
    _repair_tail(path)
    predicted = 0
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            for i, text in _predictions(predictor, batch):
                row = _prediction_row(rows[batch[i].id], batch[i], text)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                predicted += 1
                bar.update()
    bar.close()
    return predicted


def _score_and_report(spec, rows, out, judge, model_name, progress) -> dict | None:
    from .report import format_table, write_reports
    from .score import score_report

    if spec.metric == "judge" and judge is None:
        print(
            f"{spec.name}: predictions are in {out / PREDICTIONS}; score them with a judge:\n"
            f"  qwen-audio eval score --task {spec.name} --predictions {out / PREDICTIONS} "
            "--judge-url URL --judge-model NAME",
            file=sys.stderr,
        )
        return None
    report = score_report(spec, rows, judge=judge, judge_cache=out / "judge.jsonl",
                          progress=progress)  # fmt: skip
    write_reports(report, out, model=model_name, samples=len(rows))
    print(format_table(report), file=sys.stderr)
    return report.values()
