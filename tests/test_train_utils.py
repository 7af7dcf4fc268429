"""Helpers shared by the training tests (spoken clips, data files, subprocess runs), and tests of
the small pieces: the learning-rate schedule, LoRA layers, adapter names, checkpoint folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from qwen_audio.train import checkpoint as ckpt
from qwen_audio.train.adapters import _modules_regex, from_hf_name, to_hf_name
from qwen_audio.train.lora import LoRALinear, adapters_disabled, merge_lora
from qwen_audio.train.trainer import lr_factor

REPO = Path(__file__).resolve().parents[1]
ASR_PROMPT = "Detect the language and recognize the speech: <|en|>"
TRANSCRIPTS = ["hello world", "good morning", "open the door", "the cat sat down"]


def speak(folder: Path, texts: list[str] = TRANSCRIPTS) -> list[Path]:
    """Short espeak-ng recordings of `texts` (wav, 22.05 kHz); skips the test without it."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        path = folder / f"clip{i}.wav"
        if not path.exists():
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
        paths.append(path)
    return paths


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def asr_rows(clips: list[Path], texts: list[str] = TRANSCRIPTS) -> list[dict]:
    """Base-model ASR rows, audio paths relative to the data file's folder."""
    return [
        {"audio": clip.name, "prompt": ASR_PROMPT, "gt": text} for clip, text in zip(clips, texts)
    ]


def single_thread_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qwen_audio.train", "finetune", "--no-progress", *map(str, args)]


def run_training(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    out = subprocess.run(
        train_command(*args),
        env=single_thread_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def read_losses(output: Path) -> list[float]:
    lines = (output / "logs" / "train.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[2]) for line in lines]


@pytest.fixture
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- tests of the small pieces -------------------------------------------------------------


def test_lr_schedule_warmup_then_decay():
    f = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0) and all(a > b for a, b in zip(f[2:], f[3:]))
    assert f[-1] > 0.1
    lin = [lr_factor(s, 10, 0, "linear", 0.0) for s in range(10)]
    assert lin[0] == 1.0 and lin[5] == pytest.approx(0.5)
    assert lr_factor(7, 10, 2, "constant", 0.0) == 1.0


def test_lora_linear_starts_as_the_base_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    ref = base(x)
    lora = LoRALinear(base, r=2, alpha=4.0, dropout=0.0)
    assert torch.equal(lora(x), ref)  # B starts at zero
    nn.init.normal_(lora.lora_B.weight)
    adapted = lora(x)
    with adapters_disabled(lora):
        assert torch.equal(lora(x), ref)
    holder = nn.Sequential(lora)
    merge_lora(holder)
    assert type(holder[0]) is nn.Linear
    torch.testing.assert_close(holder[0](x), adapted, atol=1e-6, rtol=1e-6)


def test_adapter_names_round_trip_and_target_regex():
    for ours, hf in [
        ("language_model.model.layers.3.mlp.up_proj", "model.language_model.layers.3.mlp.up_proj"),
        ("language_model.lm_head", "lm_head"),
        ("audio_tower.layers.0.fc1", "model.audio_tower.layers.0.fc1"),
        ("multi_modal_projector.linear.weight", "model.multi_modal_projector.linear.weight"),
    ]:
        assert to_hf_name(ours) == hf and from_hf_name(hf) == ours
        assert from_hf_name(ours) == ours  # transformers 4.x / hub names are ours already
    names = [f"model.language_model.layers.{i}.self_attn.q_proj" for i in range(3)]
    counts = {"model.language_model.layers": 3}
    assert _modules_regex(names, counts) == r"model\.language_model\.layers\.\d+\.self_attn\.q_proj"
    partial = _modules_regex(names[:2], counts)
    import re

    assert re.fullmatch(partial, names[1]) and not re.fullmatch(partial, names[2])


def test_checkpoint_commit_is_atomic_and_keeps_the_last(tmp_path):
    root = ckpt.checkpoints_root(tmp_path)
    for step in (2, 4, 6):
        tmp = ckpt.start_checkpoint(root, step)
        (tmp / "weights").write_text(str(step))
        ckpt.write_state(tmp, {"step": step})
        ckpt.commit_checkpoint(root, step, keep_last=2)
    # A run killed while writing leaves a temporary folder (ignored) or a folder without the
    # state file (ignored too).
    ckpt.start_checkpoint(root, 8)
    (root / "step-000010").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-000004", "step-000006"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000006"
