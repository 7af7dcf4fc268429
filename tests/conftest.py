"""Shared fixtures: random-weight checkpoints (built once per session) and test audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.checkpoints import build_checkpoint

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """`checkpoints(name, **kwargs)` builds (once) and returns a checkpoint folder."""
    root = tmp_path_factory.mktemp("checkpoints")
    built: dict[tuple, Path] = {}

    def get(shape: str = "mha", **kwargs) -> Path:
        key = (shape, tuple(sorted(kwargs.items())))
        if key not in built:
            folder = root / f"{shape}-{len(built)}"
            built[key] = build_checkpoint(folder, shape, **kwargs)
        return built[key]

    return get


def noise_clip(seconds: float, seed: int = 0) -> np.ndarray:
    """Deterministic band-limited noise plus a tone: not silence, not speech."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    t = np.arange(n) / 16000
    tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


def has_program(name: str) -> bool:
    return shutil.which(name) is not None
