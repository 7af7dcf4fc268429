"""scripts/install.sh and scripts/quickstart.sh, run against a fake environment (issue 17).

The fake `.venv` has a `python` that records its arguments instead of running pip and a
`qwen-audio` that records what it was asked, so the tests see which installs run and which
arguments reach the chat, without a network or a real installation.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def venv(tmp_path) -> Path:
    env = tmp_path / "venv"
    (env / "bin").mkdir(parents=True)
    scripts = {
        "python": f'echo "$*" >> {env}/pip.log\n'
        '[ "${1:-}" = "-c" ] && echo "torch 0.0-fake"\n'
        f'[ "$*" = "-m pip install --disable-pip-version-check -e .[all]" ] && '
        f"cp {env}/bin/recorder {env}/bin/qwen-audio\n"
        "exit 0\n",
        "recorder": f"printf '%s\\n' \"$@\" > {env}/chat.args\n",
        "activate": f'export PATH="{env}/bin:$PATH"\n',
    }
    for name, body in scripts.items():
        path = env / "bin" / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    return env


def run(script: str, venv: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "FORCE_INSTALL"}
    environ.update(VENV=str(venv), **env)
    return subprocess.run(
        [str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )


def pip_calls(venv: Path) -> list[str]:
    log = venv / "pip.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [c for c in calls if c.startswith("-m pip install")]


def test_install_runs_once_then_skips_until_something_changes(venv):
    first = run("install.sh", venv, EXTRAS="all")
    assert first.returncode == 0, first.stderr
    calls = pip_calls(venv)
    assert any("torch==2.13.0" in c for c in calls) and calls[-1].endswith("-e .[all]")
    assert not any(" -q " in c + " " for c in calls[1:])  # torch and the package: not quiet
    assert "== installing torch==2.13.0" in first.stdout

    again = run("install.sh", venv, EXTRAS="all")
    assert again.returncode == 0 and "already installed" in again.stdout
    assert pip_calls(venv) == []

    assert "already installed" not in run("install.sh", venv, EXTRAS="all,dev").stdout
    assert pip_calls(venv)[-1].endswith("-e .[all,dev]")
    # Both sets of extras are in place now: a plain [all] (the quickstart's) skips.
    assert "already installed" in run("install.sh", venv, EXTRAS="all").stdout
    assert "already installed" in run("install.sh", venv, EXTRAS="dev").stdout

    changed = run("install.sh", venv, EXTRAS="all", TORCH_SPEC="torch==2.12.0")
    assert "already installed" not in changed.stdout
    assert any("torch==2.12.0" in c for c in pip_calls(venv))
    forced = run("install.sh", venv, EXTRAS="all", TORCH_SPEC="torch==2.12.0", FORCE_INSTALL="1")
    assert "already installed" not in forced.stdout and pip_calls(venv)


def chat_args(venv: Path) -> list[str]:
    return (venv / "chat.args").read_text().splitlines()


def test_quickstart_keeps_the_users_prompt(venv):
    assert run("quickstart.sh", venv).returncode == 0
    default = chat_args(venv)
    assert default[default.index("--prompt") + 1] == "What does the person say?"
    assert "--audio" in default

    assert run("quickstart.sh", venv, "--prompt", "Say hi").returncode == 0
    asked = chat_args(venv)
    assert asked.count("--prompt") == 1 and asked[asked.index("--prompt") + 1] == "Say hi"
    assert "--audio" not in asked

    assert run("quickstart.sh", venv, "--audio=mine.wav").returncode == 0
    assert "--prompt" not in chat_args(venv) and "--audio=mine.wav" in chat_args(venv)


def test_quickstart_rerun_skips_the_installation(venv):
    assert run("quickstart.sh", venv).returncode == 0
    assert pip_calls(venv)  # the first run installs
    rerun = run("quickstart.sh", venv)
    assert rerun.returncode == 0 and "already installed" in rerun.stderr
    assert pip_calls(venv) == []


def test_pyproject_declares_the_license_as_an_spdx_string():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    # The table form ({text = ...}) makes setuptools print a deprecation box on every build.
    assert data["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in data["build-system"]["requires"])
