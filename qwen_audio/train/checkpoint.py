"""Training checkpoints: written atomically, the last K kept, restored exactly on --resume.

A checkpoint is a folder `OUTPUT/checkpoints/step-000120/` holding the trained weights (a PEFT
adapter for LoRA runs, a full hub-layout checkpoint for full finetuning, so either can be used
for inference as it is), `optimizer.pt`, `scheduler.pt`, `rng-<rank>.pt` (Python, NumPy and
torch generators of every process) and `trainer_state.json` (the step, which fixes the data
position, since each epoch's batch order is a function of the seed). It is written under a
temporary name, flushed to disk and then renamed, so a run killed at any moment leaves either
the complete folder or none; `latest_checkpoint` ignores leftovers.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_root(output: Path) -> Path:
    return Path(output) / "checkpoints"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def temp_dir(root: Path, step: int) -> Path:
    return root / f".step-{step:06d}.tmp"


def start_checkpoint(root: Path, step: int) -> Path:
    """An empty temporary folder for the checkpoint of `step` (main process only)."""
    tmp = temp_dir(root, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(root: Path, step: int, keep_last: int) -> Path:
    """Flush the temporary folder, rename it to `step-N`, and delete all but the last K."""
    tmp, final = temp_dir(root, step), step_dir(root, step)
    (tmp / STATE_FILE).stat()  # the state file is written last: its absence means a bug
    for path in tmp.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(tmp)
    if final.exists():  # re-saving a step after a resume: replace the old folder
        old = root / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync(root)
    if keep_last > 0:
        for stale in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    for leftover in root.glob(".step-*.tmp"):  # from a run killed while saving
        if leftover != tmp:
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and (path / STATE_FILE).exists():
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(checkpoints_root(output))
    return found[-1] if found else None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def read_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STATE_FILE).read_text())


# ---- random generators ---------------------------------------------------------------------


def save_rng(folder: Path, rank: int) -> None:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(state, folder / f"rng-{rank}.pt")


def load_rng(folder: Path, rank: int) -> bool:
    """Restore this process's generators; False when the checkpoint has none for this rank."""
    path = folder / f"rng-{rank}.pt"
    if not path.exists():
        return False
    state = torch.load(path, weights_only=False)  # our own file: Python and NumPy tuples
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
