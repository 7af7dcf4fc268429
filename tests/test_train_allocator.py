"""The glibc malloc settings of CPU training (qwen_audio/train/allocator.py)."""

from __future__ import annotations

import os
import platform

import pytest

from qwen_audio.train.allocator import keep_freed_memory


def test_a_users_malloc_variables_win(monkeypatch):
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False  # their settings stay as they are
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True
