"""The command line starts light: no torch for --help, extras named when missing, -v (issue 17)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qwen_audio.cli import build_parser, main

HEAVY = ("torch", "numpy", "fastapi", "uvicorn", "peft", "transformers", "av", "soundfile")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_the_package_and_building_the_cli_imports_nothing_heavy():
    proc = run_python(
        "import sys, qwen_audio, qwen_audio.cli\n"
        "qwen_audio.cli.build_parser()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
        "qwen_audio.LLM  # the public API is still there, imported when asked for\n"
        "print('torch' in sys.modules)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "True"]


def test_help_answers_for_the_program_and_every_command():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"chat", "transcribe", "serve", "eval", "finetune", "export", "bench"} <= set(commands)
    for argv in [["--help"], ["eval", "run", "--help"]] + [[c, "--help"] for c in commands]:
        proc = subprocess.run(
            [sys.executable, "-m", "qwen_audio.cli", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0 and proc.stdout.startswith("usage: qwen-audio"), argv


def test_a_parser_module_that_cannot_import_registers_its_commands_under_their_names():
    proc = run_python(
        "import sys\n"
        "sys.modules['qwen_audio.train.cli'] = None  # as if an import inside it failed\n"
        "from qwen_audio.cli import build_parser, main\n"
        "print(sorted(build_parser()._subparsers._group_actions[0].choices))\n"
        "sys.exit(main(['finetune']))\n"
    )
    assert proc.returncode == 2
    names = eval(proc.stdout.strip())
    assert "finetune" in names and "export" in names and "train" not in names
    assert "pip install 'qwen-audio[train]'" in proc.stderr
    assert "`qwen-audio finetune`" in proc.stderr


def test_a_missing_extra_at_run_time_names_the_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` raises
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "'uvicorn'" in err and "pip install 'qwen-audio[server]'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [["-v", "chat"], ["chat", "-v"], ["eval", "run", "-v", "--task", "t", "--data", "d",
     "--output", "o"], ["--verbose", "serve"]],
)  # fmt: skip
def test_verbose_is_accepted_before_and_after_the_command(argv):
    assert build_parser().parse_args(argv).verbose is True
    quiet = [a for a in argv if a not in ("-v", "--verbose")]
    assert build_parser().parse_args(quiet).verbose is False


def test_verbose_logs_what_loading_does(checkpoints):
    base = [sys.executable, "-m", "qwen_audio.cli"]
    chat = ["chat", "--model", str(checkpoints("mha")), "--prompt", "hi", "--max-tokens", "1"]
    quiet = subprocess.run(base + chat, capture_output=True, text=True, timeout=300)
    loud = subprocess.run(base + chat + ["-v"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and loud.returncode == 0, loud.stderr
    assert "INFO" not in quiet.stderr
    assert "INFO qwen_audio.cli: loading" in loud.stderr
    assert "INFO qwen_audio.loading: loaded" in loud.stderr
