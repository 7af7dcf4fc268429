"""Score prediction rows (`gt`, `response`, `source`) the way the original scripts did."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import metrics
from .tasks import Task, get_task


@dataclass(frozen=True)
class SourceScore:
    source: str  # a row `source`, or an AIR-Bench chat category
    value: float | None  # in the metric's unit; None when it is not defined (see metrics.py)
    n: int  # rows scored
    detail: dict = field(default_factory=dict)  # edits/ref_tokens, failed answers, ...


@dataclass
class ScoreReport:
    task: Task
    scores: list[SourceScore]  # in the order the sources first appear
    judge: object | None = None  # judge.JudgeSummary for AIR-Bench chat

    def values(self) -> dict[str, float | None]:
        return {s.source: s.value for s in self.scores}


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file (or of a JSON list, as the original scripts wrote)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a last line cut by an interruption
                break
            raise ValueError(f"{path}:{n}: not a JSON object") from None
    return rows


def _group(rows: list[dict], source_of) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(source_of(r), []).append(r)
    return groups


def _require(rows: list[dict], keys: tuple[str, ...]) -> None:
    for i, r in enumerate(rows):
        missing = [k for k in keys if k not in r]
        if missing:
            raise ValueError(f"prediction row {i + 1} has no {', '.join(missing)} field")


def _gt_letter(r: dict) -> str:
    answer = r.get("answer_gt", r.get("gt"))
    for letter in metrics.CHOICE_LETTERS:
        if answer == r.get("choice_" + letter.lower()):
            return letter
    raise ValueError(
        f"row {r.get('id', r.get('uniq_id'))}: answer {answer!r} is none of the choices"
    )


def score_report(
    task: Task | str,
    rows: list[dict],
    *,
    judge=None,
    judge_cache: str | os.PathLike | None = None,
    progress: bool = False,
) -> ScoreReport:
    """Per-source scores with their details. `judge` (a JudgeConfig) is needed for AIR-Bench chat."""
    task = get_task(task) if isinstance(task, str) else task
    rows = list(rows)
    if not rows:
        raise ValueError("no prediction rows to score")
    if task.metric == "judge":
        return _score_chat(task, rows, judge, judge_cache, progress)
    if task.metric == "choice_acc":
        _require(rows, ("response",))
        groups = _group(
            rows, lambda r: str(r.get("source") or f"{r.get('task_name')}_{r.get('dataset_name')}")
        )
        scores = []
        for source, group in groups.items():
            acc = metrics.choice_accuracy(
                [_gt_letter(r) for r in group], [str(r["response"]) for r in group]
            )
            scores.append(
                SourceScore(
                    source, acc.value, acc.total, {"correct": acc.correct, "failed": acc.failed}
                )
            )
        return ScoreReport(task, scores)

    _require(rows, ("gt", "response", "source"))
    scores = []
    for source, group in _group(rows, lambda r: str(r["source"])).items():
        refs = [str(r["gt"]) for r in group]
        hyps = [str(r["response"]) for r in group]
        if task.metric in ("wer", "cer"):
            er = metrics.error_rate(refs, hyps, task.language or "en")
            detail = {"edits": er.edits, "ref_tokens": er.ref_tokens}
            scores.append(SourceScore(source, er.value, er.n, detail))
        elif task.metric == "bleu":
            tokenize = metrics.bleu_tokenizer(source)
            bleu = metrics.corpus_bleu(refs, hyps, tokenize)
            scores.append(SourceScore(source, bleu, len(group), {"tokenize": tokenize}))
        elif task.metric == "acc":
            scores.append(SourceScore(source, metrics.accuracy(refs, hyps), len(group)))
        else:
            raise ValueError(f"unknown metric {task.metric!r}")
    return ScoreReport(task, scores)


def _score_chat(task, rows, judge_config, cache, progress) -> ScoreReport:
    from .judge import REPORTED_CATEGORIES, judge_chat

    if judge_config is None:
        raise ValueError(
            f"{task.name} is scored by a judge model: pass --judge-url and --judge-model "
            "(any OpenAI-compatible server; the key is read from --judge-key-env)"
        )
    summary = judge_chat(rows, judge_config, cache=cache, progress=progress)
    order = [c for c in REPORTED_CATEGORIES if c in summary.scores]
    order += [
        c
        for c in summary.scores
        if c not in order and c not in ("speech_and_sound", "speech_and_music")
    ]
    scores = [
        SourceScore(
            c,
            summary.scores[c],
            summary.counts[c],
            {"reference_score": summary.reference_scores[c]},
        )
        for c in order
    ]
    return ScoreReport(task, scores, judge=summary)


def score_predictions(task: Task | str, rows: list[dict], *, judge=None) -> dict[str, float | None]:
    """{source: metric}: WER/CER and accuracy as fractions, BLEU as sacrebleu's 0..100 score,
    AIR-Bench chat as the judge's 1..10 score per category. None: not defined for that source."""
    return score_report(task, rows, judge=judge).values()
