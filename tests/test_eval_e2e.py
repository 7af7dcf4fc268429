"""`eval run` end to end with our engine: a random-weight checkpoint on espeak-ng speech.

The numbers are meaningless with random weights; the test checks the plumbing with a real model:
files, resume, two-process sharding (torchrun, gloo) giving the same predictions and metrics as
one process, the report and the plot. Every process computes with one thread and batch size 1,
so each sample's arithmetic is the same in every run.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from qwen_audio.eval.runner import run_eval
from qwen_audio.eval.score import read_predictions
from tests.conftest import has_program
from tests.test_eval_runner import REPORT_RESULT, torchrun

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "please call me back tomorrow morning",
    "it costs twenty five dollars",
    "good night and see you soon",
    "the weather is nice today",
]

SCRIPT = """
import json, sys
from qwen_audio.eval.runner import run_eval

model, data, out = sys.argv[1:4]
result = run_eval("librispeech", data, out, model=model, batch_size=1, max_tokens=6,
                  dtype="float32", progress=False)
"""


def _one_thread_run(model, data, out, limit=None) -> dict:
    """run_eval in this process with one thread, as each torchrun rank computes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_eval("librispeech", data, out, model=str(model), batch_size=1, max_tokens=6,
                          limit=limit, dtype="float32", progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return {"metrics": result.metrics, "predicted": result.predicted}


@pytest.mark.slow
def test_eval_run_with_random_checkpoint(checkpoints, tmp_path):
    if not has_program("espeak-ng"):
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    model = checkpoints("mha")
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    rows = []
    for i, text in enumerate(SENTENCES):
        wav = data / "clips" / f"{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        source = "librispeech_test_clean" if i % 2 else "librispeech_dev_other"
        rows.append({"audio": f"clips/{i}.wav", "gt": text, "source": source,
                     "prompt": "Detect the language and recognize the speech: <|en|>"})  # fmt: skip
    (data / "librispeech_eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT + REPORT_RESULT)

    single = tmp_path / "single"
    first = _one_thread_run(model, data, single, limit=2)
    assert first["predicted"] == 2 and set(first["metrics"]) == {
        "librispeech_test_clean",
        "librispeech_dev_other",
    }
    resumed = _one_thread_run(model, data, single)  # picks up the rest
    assert resumed["predicted"] == 3

    sharded_dir = tmp_path / "sharded"
    results = torchrun(script, str(model), str(data), str(sharded_dir), out=sharded_dir)
    assert sorted(r["predicted"] for r in results) == [2, 3]
    sharded = next(r for r in results if r["metrics"] is not None)
    assert sharded["metrics"] == resumed["metrics"]
    one = read_predictions(single / "predictions.jsonl")
    two = read_predictions(tmp_path / "sharded" / "predictions.jsonl")
    assert [r["response"] for r in one] == [r["response"] for r in two]
    assert any(r["response"] for r in one)  # the engine produced text
    assert [r["id"] for r in two] == [str(i) for i in range(5)]
    for folder in (single, tmp_path / "sharded"):
        assert json.loads((folder / "metrics.json").read_text())["scores"] == sharded["metrics"]
        assert "| librispeech_test_clean | 2 |" in (folder / "report.md").read_text()
        assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
