"""How the code hangs together (issue 17): no import cycles in eval, no sys.path hacks in the
benchmarks, the benchmark checkpoint builder in the package."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from qwen_audio import LLM, SamplingParams
from qwen_audio.bench.checkpoint import SHAPES, write_streamed

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports written as `.name`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            if not node.module:  # `from . import x`
                found |= {"." + a.name for a in node.names}
    return found


def test_scoring_does_not_import_its_presentation_or_cli():
    eval_dir = REPO / "qwen_audio" / "eval"
    score = imported_modules(eval_dir / "score.py")
    assert not score & {".report", ".cli", "qwen_audio.eval.report", "qwen_audio.eval.cli"}
    report = imported_modules(eval_dir / "report.py")
    assert ".score" in report and ".cli" not in report


def test_benchmarks_import_only_the_package():
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        text = script.read_text()
        assert "sys.path" not in text, script.name
        assert not {m for m in imported_modules(script) if m.split(".")[0] == "tests"}, script.name


def test_make_checkpoint_runs_from_anywhere(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "make_checkpoint.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--preset {0.5b,7b}" in proc.stdout


def test_streamed_checkpoint_is_sharded_and_loads(tmp_path):
    path = write_streamed(tmp_path / "ckpt", SHAPES["gqa1"], shards=3)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == 3 and all((path / f).exists() for f in files)
    out = LLM(path, dtype="float32").generate("hello", SamplingParams(temperature=0, max_tokens=3))
    assert len(out[0].token_ids) >= 1


def test_readme_gets_a_newcomer_from_the_quickstart_to_the_commands():
    text = (REPO / "README.md").read_text()
    first_command = text.index("\nqwen-audio ")
    assert ". .venv/bin/activate" in text[:first_command]  # said before the first example
    assert "issue 7" not in text  # the project's history is not a column heading
    mention = text.index("build/demo/report.json")
    assert "make demo-model" in text[mention - 200 : mention]  # how a clone gets that file
    # what a long file's SRT holds: a cue per segment cut at pauses, and how to get fixed windows
    assert "--format srt" in text and "one cue per segment" in text
    assert "--segmentation\nfixed" in text or "--segmentation fixed" in text
