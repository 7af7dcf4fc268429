"""Run logs: one CSV row and one TensorBoard point per step, and a loss-curve PNG at the end.

Only the main process writes. A resumed run drops the rows after the step it resumes from, so
the files read as if the run had never stopped.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = (
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "tokens_per_s",
    "samples_per_s",
    "elapsed_s",
    "reward_margin",
    "reward_accuracy",
)


class RunLog:
    def __init__(self, folder: Path, *, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / "train.csv"
        self.rows = self._previous_rows(resume_step)
        self._file = self.csv_path.open("w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
        self._csv.writeheader()
        for row in self.rows:
            self._csv.writerow(row)
        self._file.flush()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    str(self.folder / "tensorboard"), purge_step=resume_step + 1
                )
            except ImportError:
                log.warning("tensorboard is not installed: logging to CSV only")

    def _previous_rows(self, resume_step: int) -> list[dict]:
        if resume_step == 0 or not self.csv_path.exists():
            return []
        with self.csv_path.open(newline="") as f:
            return [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]

    def write(self, metrics: dict[str, float]) -> None:
        row = {k: _fmt(metrics.get(k)) for k in COLUMNS}
        self.rows.append(row)
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None:
            step = int(metrics["step"])
            for key, value in metrics.items():
                if key != "step" and value is not None:
                    self._tb.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        self.plot()

    def plot(self) -> Path | None:
        """loss.png: the loss per step and its running mean, with the learning rate."""
        return plot_loss(self.rows, self.folder / "loss.png")


def plot_loss(rows: list[dict], path: Path, stage_starts: tuple[int, ...] = ()) -> Path | None:
    """The loss of `rows` (train.csv rows) per step, its running mean and the learning rate,
    as a PNG at `path`; a dashed line at each step of `stage_starts` (runs shown end to end)."""
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s", path.name)
        return None
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    lr = [float(r["lr"]) for r in rows]
    window = max(1, len(loss) // 20)
    smooth = [
        sum(loss[max(0, i - window + 1) : i + 1]) / min(window, i + 1) for i in range(len(loss))
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, loss, color="tab:blue", alpha=0.35, label="loss")
    ax.plot(steps, smooth, color="tab:blue", label=f"loss, mean of {window}")
    for step in stage_starts:
        ax.axvline(step, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, lr, color="tab:orange", alpha=0.7, label="learning rate")
    ax2.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
