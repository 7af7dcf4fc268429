"""How scores are shown: the Markdown table, metrics.json, report.md and report.png."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .score import ScoreReport
from .tasks import LOWER_IS_BETTER


def display_value(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric in ("wer", "cer"):
        return f"{100 * value:.2f}%"
    if metric in ("acc", "choice_acc"):
        return f"{value:.4f}"
    return f"{value:.2f}"


def _delta(metric: str, d: float) -> str:
    if metric in ("wer", "cer"):
        return f"{100 * d:+.2f}"  # percentage points
    if metric in ("acc", "choice_acc"):
        return f"{d:+.4f}"
    return f"{d:+.2f}"


def format_table(report: ScoreReport) -> str:
    """A Markdown table of our scores beside the published ones."""
    task = report.task
    label = task.metric_label
    lines = [
        f"| source | n | {label} | published | Δ |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s in report.scores:
        pub = task.published_for(s.source)
        published = display_value(task.metric, pub.value) if pub else ""
        delta = _delta(task.metric, s.value - pub.value) if pub and s.value is not None else ""
        lines.append(f"| {s.source} | {s.n} | {display_value(task.metric, s.value)} | "
                     f"{published} | {delta} |")  # fmt: skip
    return "\n".join(lines)


def metrics_dict(report: ScoreReport, **meta) -> dict:
    task = report.task
    out = {
        "task": task.name,
        "metric": task.metric,
        "language": task.language,
        "scores": report.values(),
        "sources": {
            s.source: {
                "value": s.value,
                "n": s.n,
                **s.detail,
                "published": (p.value if (p := task.published_for(s.source)) else None),
            }
            for s in report.scores
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
    }
    if report.judge is not None:
        out["judge"] = {"failed": report.judge.failed, "sub_scores": report.judge.scores}
    return out


def write_reports(report: ScoreReport, output_dir: str | os.PathLike, **meta) -> dict[str, Path]:
    """Write metrics.json, report.md (our numbers beside the published ones) and report.png."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "markdown": out / "report.md",
        "plot": out / "report.png",
    }
    paths["metrics"].write_text(
        json.dumps(metrics_dict(report, **meta), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    task = report.task
    better = "lower" if task.metric in LOWER_IS_BETTER else "higher"
    md = [
        f"# {task.name}: {task.metric_label}",
        "",
        f"{task.description}. {better.capitalize()} is better. Published: Qwen2-Audio's report.",
        "",
        format_table(report),
        "",
    ]
    if meta:
        md += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    paths["markdown"].write_text("\n".join(md), encoding="utf-8")
    plot_comparison(report, paths["plot"])
    return paths


def plot_comparison(report: ScoreReport, path: str | os.PathLike) -> None:
    """Grouped bars: ours beside the published number for each source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = report.task
    scale = 100.0 if task.metric in ("wer", "cer") else 1.0
    unit = " (%)" if scale == 100.0 else ""
    labels = [s.source for s in report.scores]
    ours = [(s.value or 0.0) * scale for s in report.scores]
    published = [
        (p.value * scale if (p := task.published_for(s.source)) else None) for s in report.scores
    ]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) + 2), 4.2))
    xs = range(len(labels))
    bars = ax.bar([x - width / 2 for x in xs], ours, width, label="ours", color="#3b6ea5")
    for bar, s in zip(bars, report.scores):
        ax.annotate(
            display_value(task.metric, s.value).rstrip("%"),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize=8,
        )  # fmt: skip
    pub_x = [x + width / 2 for x, p in zip(xs, published) if p is not None]
    pub_y = [p for p in published if p is not None]
    if pub_y:
        ax.bar(pub_x, pub_y, width, label="published", color="#c8c8c8", edgecolor="#888888")
        for x, y in zip(pub_x, pub_y):
            ax.annotate(f"{y:g}", (x, y), ha="center", va="bottom", fontsize=8, color="#555555")
    ax.set_xticks(list(xs))
    rotate = len(labels) > 3
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                       fontsize=8)  # fmt: skip
    better = "lower" if task.metric in LOWER_IS_BETTER else "higher"
    ax.set_ylabel(f"{task.metric_label}{unit}, {better} is better")
    ax.set_title(f"{task.name}: {task.metric_label}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
