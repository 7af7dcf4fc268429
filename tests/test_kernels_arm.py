"""The ARM64 (NEON) kernels, checked on any machine: tests/kernels/neon_check.cpp compares them
with a scalar reference, built natively on ARM64 or with Debian's aarch64 cross compiler and run
under qemu-aarch64 elsewhere (scripts/system-deps.sh installs both)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = platform.machine().lower() in ("aarch64", "arm64")
COMPILER = shutil.which("c++" if NATIVE else "aarch64-linux-gnu-g++")
RUNNER = [] if NATIVE else [shutil.which("qemu-aarch64")]


@pytest.mark.skipif(
    COMPILER is None or None in RUNNER,
    reason="needs an ARM64 machine, or aarch64-linux-gnu-g++ and qemu-aarch64",
)
def test_neon_kernels_match_the_scalar_reference(tmp_path):
    binary = tmp_path / "neon_check"
    flags = ["-O2", "-std=c++17"] + ([] if NATIVE else ["-static"])
    subprocess.run(
        [
            COMPILER,
            *flags,
            "-I",
            str(ROOT / "qwen_audio" / "kernels"),
            str(ROOT / "tests" / "kernels" / "neon_check.cpp"),
            "-o",
            str(binary),
        ],
        check=True,
        capture_output=True,
    )
    run = subprocess.run([*RUNNER, str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok:")
