"""Every command without --model runs on $QWEN_AUDIO_MODEL, else on the demo model (issue 17).

`QWEN_AUDIO_MODEL` points at a tiny random checkpoint here, so each command really runs (chat,
transcribe, quantize, serve up to the web app, eval run, finetune, export) and the test checks
that the checkpoint it loaded is that one. The demo model's own end-to-end run is in
test_demo_model.py; here: it is the default, and every command's help says where it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import soundfile as sf

from qwen_audio.cli import main
from qwen_audio.config import DEMO_MODEL, MODEL_ENV, default_model
from tests.conftest import noise_clip

MODEL_COMMANDS = [
    ["chat"],
    ["transcribe"],
    ["quantize"],
    ["serve"],
    ["eval", "run"],
    ["finetune"],
    ["export"],
    ["bench"],
]


@pytest.fixture
def env_model(checkpoints, monkeypatch) -> Path:
    path = checkpoints("mha")
    monkeypatch.setenv(MODEL_ENV, str(path))
    return path


@pytest.fixture
def wav(tmp_path) -> str:
    path = tmp_path / "clip.wav"
    sf.write(path, noise_clip(1.0), 16000)
    return str(path)


def loaded(caplog) -> list[str]:
    return [r.args[0] for r in caplog.records if r.getMessage().startswith("loading ")]


def test_default_model_is_the_argument_then_the_environment_then_the_demo_model(monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert default_model() == DEMO_MODEL and (DEMO_MODEL / "config.json").exists()
    assert default_model("some/dir") == "some/dir"
    monkeypatch.setenv(MODEL_ENV, "Qwen/Qwen2-Audio-7B-Instruct")
    assert default_model() == "Qwen/Qwen2-Audio-7B-Instruct"
    assert default_model("mine") == "mine"


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_help_of_every_model_command_says_where_the_demo_model_is(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even at hyphens
    assert str(DEMO_MODEL) in text and f"${MODEL_ENV}" in text


def test_chat_and_transcribe_load_the_environment_model(env_model, wav, capsys, caplog):
    caplog.set_level(logging.INFO, logger="qwen_audio.cli")
    assert main(["chat", "--prompt", "hi", "--max-tokens", "2", "--temperature", "0"]) == 0
    assert main(["transcribe", wav, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["segments"][0]["end"] == 1.0
    assert loaded(caplog) == [str(env_model)] * 2


def test_quantize_without_model_reads_the_environment_model(env_model, tmp_path, capsys):
    assert main(["quantize", "--method", "int8", "--output", str(tmp_path / "q")]) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "qwen_audio"


class AppBuilt(Exception):
    """Raised where the server would start listening: the test has seen what it needs."""


def test_serve_without_model_builds_the_app_on_the_environment_model(env_model, monkeypatch):
    import qwen_audio.server.app as app_module

    real_create_app = app_module.create_app

    def create_app(engine, settings):
        real_create_app(engine, settings)  # the whole app is built on that engine
        raise AppBuilt(engine)

    def listen(self):  # never serve for real, whatever happens above
        raise AssertionError("serve reached uvicorn without building the app through create_app")

    monkeypatch.setattr(app_module, "create_app", create_app)
    monkeypatch.setattr("uvicorn.Server.run", listen)
    with pytest.raises(AppBuilt) as built:
        main(["serve", "--port", "0"])
    engine = built.value.args[0]
    engine.shutdown()
    assert engine.checkpoint.path == env_model


def test_eval_run_without_model_uses_the_environment_model(env_model, wav, tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"audio": wav, "prompt": "Describe:", "gt": "x", "source": "s"}))
    out = tmp_path / "out"
    args = ["eval", "run", "--task", "generic", "--metric", "acc", "--data", str(data)]
    assert main(args + ["--output", str(out), "--max-tokens", "2"]) == 0
    written = " ".join(f.read_text() for f in out.iterdir() if f.suffix in (".json", ".md"))
    assert str(env_model) in written


@pytest.mark.slow
def test_finetune_and_export_without_model_use_the_environment_model(env_model, wav, tmp_path):
    data = tmp_path / "train.jsonl"
    row = {"audio": wav, "prompt": "Detect the language and recognize the speech: <|en|>"}
    data.write_text(json.dumps(row | {"gt": "a tone"}) + "\n")
    adapter = tmp_path / "adapter"
    args = ["finetune", "--data", str(data), "--output", str(adapter), "--max-steps", "1"]
    assert main(args + ["--no-tensorboard", "--no-progress"]) == 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(env_model)
    merged = tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter), "--output", str(merged), "--merge"]) == 0
    assert (merged / "model.safetensors").exists()


def test_bench_without_model_runs_the_workers_on_the_environment_model(env_model, monkeypatch):
    import qwen_audio.bench.cli as bench

    def worker(framework, args, quantize=None):
        raise RuntimeError(f"worker would load {args.model}")

    monkeypatch.setattr(bench, "worker", worker)
    monkeypatch.setattr(bench, "memory_bandwidth_gbs", lambda *a, **k: 1.0)
    with pytest.raises(RuntimeError, match=f"worker would load {env_model}$"):
        main(["bench", "--workloads", "decode"])
