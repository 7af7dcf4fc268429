"""qwen_audio.openmp: only the engine thread keeps an OpenMP team (AsyncLLM's set-up)."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from qwen_audio import openmp

needs_libgomp = pytest.mark.skipif(
    openmp._libgomp() is None, reason="torch does not run on a libgomp loaded in this process"
)


def in_thread(fn):
    """fn() on a new thread; its result (or its exception, raised here)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@needs_libgomp
def test_serial_in_this_thread_leaves_other_threads_alone():
    before = torch.get_num_threads()

    def serial():
        ok = openmp.serial_in_this_thread()
        x = torch.randn(256, 1024)
        return (
            ok,
            torch.get_num_threads(),
            (x * 2).sum().item() == pytest.approx(2 * x.sum().item(), rel=1e-4),
        )

    ok, inside, computed = in_thread(serial)
    assert ok and inside == 1 and computed
    assert torch.get_num_threads() == before  # OpenMP's count is per thread
    assert in_thread(torch.get_num_threads) == before  # and new threads are not affected


def task_count() -> int:
    return len(os.listdir("/proc/self/task"))


@needs_libgomp
def test_release_team_ends_the_calling_threads_workers():
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: torch starts no OpenMP team")

    def team_then_release():
        x = torch.randn(4096, 1024)
        (x.exp() + 1).sum()  # a parallel op: this thread's team starts
        with_team = task_count()
        assert openmp.release_team()
        deadline = time.monotonic() + 5
        while task_count() >= with_team and time.monotonic() < deadline:
            time.sleep(0.01)
        without = task_count()
        (x.exp() + 1).sum()  # a later parallel op still works (a new team)
        return with_team, without

    with_team, without = in_thread(team_then_release)
    assert without < with_team


def test_failures_leave_the_thread_as_it_was(monkeypatch):
    # both run where an error would break a thread pool or an engine's start: they never raise
    def broken():
        raise OSError("no OpenMP here")

    monkeypatch.setattr(openmp, "_libgomp", broken)
    assert openmp.serial_in_this_thread() is False
    assert openmp.release_team() is False
    monkeypatch.setattr(openmp, "_libgomp", lambda: None)  # another OpenMP runtime, or none
    assert openmp.serial_in_this_thread() is False and openmp.release_team() is False
