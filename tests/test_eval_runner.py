"""The eval runner's plumbing with a fake predictor: files, resume after an interruption,
two-process sharding equal to one process, reports, the server client and the CLI."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwen_audio.eval.predictors import EvalRequest
from qwen_audio.eval.runner import run_eval
from qwen_audio.eval.score import read_predictions, score_predictions

REPO = Path(__file__).resolve().parents[1]

# Shared by the in-process runs and the torchrun script, so both predict the same texts.
PREDICTOR_SRC = """
def make_predictor(gts, calls=None):
    def predict(requests):
        if calls is not None:
            calls.extend(r.id for r in requests)
        return [gts[r.id] if int(r.id) % 2 == 0 else gts[r.id].upper() + " extra"
                for r in requests]
    return predict
"""
_ns: dict = {}
exec(PREDICTOR_SRC, _ns)
make_predictor = _ns["make_predictor"]

GTS = [
    "the cat sat on the mat",
    "hello world",
    "good morning everyone",
    "twenty five dollars",
    "a quick brown fox",
    "see you tomorrow",
    "it is raining again",
]


@pytest.fixture
def dataset(tmp_path):
    """7 short noise clips and a librispeech-style JSONL over two sources."""
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, gt in enumerate(GTS):
        sf.write(root / "clips" / f"{i}.wav", 0.1 * rng.standard_normal(1600 * (i + 2)), 16000)
        source = "librispeech_dev_clean" if i % 3 else "librispeech_test_other"
        rows.append({"id": str(i), "audio": f"clips/{i}.wav", "gt": gt, "source": source,
                     "prompt": "Detect the language and recognize the speech: <|en|>"})  # fmt: skip
    (root / "librispeech_eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, {r["id"]: r["gt"] for r in rows}


def test_run_writes_predictions_metrics_report_and_plot(dataset, tmp_path):
    data, gts = dataset
    out = tmp_path / "out"
    result = run_eval("librispeech", data, out, predict_fn=make_predictor(gts), progress=False)

    rows = read_predictions(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == [str(i) for i in range(7)]
    for r in rows:
        assert {"gt", "response", "source", "audio_path", "prompt"} <= set(r)
        assert Path(r["audio_path"]).is_file()
    assert result.metrics == score_predictions("librispeech", rows)
    assert result.predicted == result.total == 7

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "librispeech" and metrics["scores"] == result.metrics
    assert metrics["sources"]["librispeech_dev_clean"]["published"] == 0.017
    report = (out / "report.md").read_text()
    assert "| librispeech_dev_clean | 4 |" in report and "1.70%" in report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["task"] == "librispeech"


def test_resume_after_interruption_reaches_the_same_metrics(dataset, tmp_path):
    data, gts = dataset
    full = run_eval("librispeech", data, tmp_path / "full", predict_fn=make_predictor(gts),
                    batch_size=3, progress=False)  # fmt: skip

    out = tmp_path / "resumed"
    seen = []

    def crashing(requests):
        if len(seen) >= 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the 4th sample
        seen.extend(r.id for r in requests)
        return make_predictor(gts)(requests)

    with pytest.raises(KeyboardInterrupt):
        run_eval("librispeech", data, out, predict_fn=crashing, batch_size=1, progress=False)
    assert [r["id"] for r in read_predictions(out / "predictions.jsonl")] == ["0", "1", "2"]
    with open(out / "predictions.jsonl", "a") as f:  # a kill in the middle of a write
        f.write('{"id": "3", "gt": "twen')

    calls: list[str] = []
    resumed = run_eval("librispeech", data, out, predict_fn=make_predictor(gts, calls),
                       batch_size=3, progress=False)  # fmt: skip
    assert calls == ["3", "4", "5", "6"]
    assert resumed.predicted == 4
    assert resumed.metrics == full.metrics
    assert read_predictions(out / "predictions.jsonl") == read_predictions(
        tmp_path / "full" / "predictions.jsonl"
    )

    # a finished run has nothing left to predict
    again = run_eval("librispeech", data, out, predict_fn=make_predictor(gts, calls),
                     progress=False)  # fmt: skip
    assert again.predicted == 0 and again.metrics == full.metrics and len(calls) == 4


def test_resume_refuses_other_settings(dataset, tmp_path):
    data, gts = dataset
    out = tmp_path / "out"
    run_eval("librispeech", data, out, predict_fn=make_predictor(gts), limit=2, progress=False)
    with pytest.raises(ValueError, match="prompt_variant"):
        run_eval("librispeech", data, out, predict_fn=make_predictor(gts),
                 prompt_variant="instruct", progress=False)  # fmt: skip
    # a larger limit is a resume, not a new run
    more = run_eval("librispeech", data, out, predict_fn=make_predictor(gts), limit=4,
                    progress=False)  # fmt: skip
    assert more.predicted == 2 and more.total == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each process leaves its result beside the output folder (the stdout of torchrun's workers
# can lose lines when the launcher exits first).
REPORT_RESULT = """
import os
from pathlib import Path
Path(f"{out}.result{os.environ.get('RANK', '0')}.json").write_text(
    json.dumps({"metrics": result.metrics, "predicted": result.predicted}))
"""

SHARD_SCRIPT = PREDICTOR_SRC + """
import json, sys
from qwen_audio.eval.runner import run_eval

data, out = sys.argv[1], sys.argv[2]
gts = {json.loads(l)["id"]: json.loads(l)["gt"] for l in open(data + "/librispeech_eval.jsonl")}
result = run_eval("librispeech", data, out, predict_fn=make_predictor(gts), batch_size=2,
                  progress=False)
""" + REPORT_RESULT  # fmt: skip


def read_results(out: Path) -> list[dict]:
    """The results the processes of one run left for `out` (removed once read)."""
    files = sorted(out.parent.glob(out.name + ".result*.json"))
    results = [json.loads(f.read_text()) for f in files]
    for f in files:
        f.unlink()
    return results


def torchrun(script: Path, *args: str, out: Path, nproc: int = 2) -> list[dict]:
    """Run `script` under torchrun on CPU (gloo); the results of all ranks for `out`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = read_results(out)
    assert len(results) == nproc, proc.stderr[-4000:]
    return results


def test_two_process_sharding_equals_one_process(dataset, tmp_path):
    data, gts = dataset
    single = run_eval("librispeech", data, tmp_path / "single", predict_fn=make_predictor(gts),
                      batch_size=2, progress=False)  # fmt: skip
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    results = torchrun(script, str(data), str(tmp_path / "sharded"), out=tmp_path / "sharded")

    assert len(results) == 2
    assert sorted(r["predicted"] for r in results) == [3, 4]  # rows i % 2 == rank
    rank0 = next(r for r in results if r["metrics"] is not None)
    assert rank0["metrics"] == single.metrics
    sharded = tmp_path / "sharded"
    assert read_predictions(sharded / "predictions.jsonl") == read_predictions(
        tmp_path / "single" / "predictions.jsonl"
    )
    assert not list(sharded.glob("predictions.part*"))
    assert (sharded / "report.png").is_file()


def test_chat_task_without_judge_stops_after_predicting(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(16000), 16000)
    row = {"audio": "a.wav", "prompt": "What is it?", "gt": "silence", "source": "sound_QA",
           "meta_info": "one second of silence"}  # fmt: skip
    (tmp_path / "airbench_chat.jsonl").write_text(json.dumps(row) + "\n")
    seen: list[EvalRequest] = []

    def predict(requests):
        seen.extend(requests)
        return ["It is silence."] * len(requests)

    result = run_eval("airbench_chat", tmp_path, tmp_path / "out", predict_fn=predict,
                      progress=False)  # fmt: skip
    assert result.metrics is None
    assert seen[0].chat and seen[0].prompt == "What is it?"
    assert seen[0].messages()[0] == {"role": "system", "content": "You are a helpful assistant."}
    (pred,) = read_predictions(tmp_path / "out" / "predictions.jsonl")
    assert pred["meta_info"] == "one second of silence" and pred["question"] == "What is it?"
    assert pred["response"] == "It is silence."


# --------------------------------------------------------------------------- server client


@pytest.fixture
def fake_server():
    """An OpenAI-compatible server that echoes the audio size and records every request."""
    seen: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def _send(self, payload):
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._send({"object": "list", "data": [{"id": "qwen2-audio-test"}]})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            if self.path == "/v1/completions":
                audio = base64.b64decode(body["audios"][0]["data"])
                self._send({"choices": [{"text": f"{len(audio)} bytes"}]})
            else:
                part = body["messages"][1]["content"][0]["input_audio"]
                audio = base64.b64decode(part["data"])
                self._send({"choices": [{"message": {"content": f"{len(audio)} bytes"}}]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_server_predictor_sends_audio_and_prompts(dataset, tmp_path, fake_server):
    data, _ = dataset
    url, seen = fake_server
    run_eval("librispeech", data, tmp_path / "raw", server_url=url, limit=3, batch_size=2,
             progress=False)  # fmt: skip
    rows = read_predictions(tmp_path / "raw" / "predictions.jsonl")
    for row in rows:
        assert row["response"] == f"{Path(row['audio_path']).stat().st_size} bytes"
    path, body = seen[0]
    assert path == "/v1/completions"
    assert body["model"] == "qwen2-audio-test"
    assert body["prompt"] == (
        "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>"
    )
    assert body["audios"][0]["format"] == "wav"
    assert (body["temperature"], body["max_tokens"], body["min_tokens"]) == (0.0, 256, 1)

    seen.clear()
    run_eval("librispeech", data, tmp_path / "chat", server_url=url + "/v1", limit=2,
             prompt_variant="instruct", progress=False)  # fmt: skip
    path, body = seen[0]
    assert path == "/v1/chat/completions"
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert user["content"][0]["type"] == "input_audio"
    assert user["content"][1] == {
        "type": "text",
        "text": "Transcribe the speech. The speech is in English.",  # qwen-audio transcribe's
    }


def test_non_wav_audio_is_sent_as_16k_wav(tmp_path):
    import io

    from qwen_audio.eval.predictors import wav_base64

    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    sf.write(tmp_path / "a.flac", tone, 8000)
    samples, rate = sf.read(io.BytesIO(base64.b64decode(wav_base64(str(tmp_path / "a.flac")))))
    assert rate == 16000 and len(samples) == 16000
    sf.write(tmp_path / "b.wav", tone, 8000)  # a WAV goes as it is
    assert (
        base64.b64decode(wav_base64(str(tmp_path / "b.wav"))) == (tmp_path / "b.wav").read_bytes()
    )


def test_cli_run_and_score(dataset, tmp_path, fake_server, capsys):
    from qwen_audio.cli import main

    data, _ = dataset
    url, _ = fake_server
    out = tmp_path / "out"
    args = ["eval", "run", "--task", "librispeech", "--data", str(data), "--server", url,
            "--output", str(out), "--limit", "4", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())["scores"]
    capsys.readouterr()
    preds = str(out / "predictions.jsonl")
    assert main(["eval", "score", "--task", "librispeech", "--predictions", preds]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == metrics

    assert main(["eval", "run", "--task", "librispeech", "--data", str(tmp_path / "none"),
                 "--server", url, "--output", str(out)]) == 2  # fmt: skip
    assert "librispeech_eval.jsonl" in capsys.readouterr().err
