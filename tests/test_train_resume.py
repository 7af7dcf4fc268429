"""`kill -9` in the middle of a run, then `--resume`: the same final weights as a run that was
never interrupted (CPU, float32, same seed), bit for bit."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from qwen_audio.train.checkpoint import list_checkpoints
from qwen_audio.train.cli import main as train_main
from tests.test_train_utils import (  # noqa: F401
    asr_rows,
    one_thread,
    read_losses,
    run_training,
    single_thread_env,
    speak,
    train_command,
    write_jsonl,
)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_kill_9_then_resume_gives_the_uninterrupted_weights(checkpoints, tmp_path, mode):
    base = checkpoints("mha")
    clips = speak(tmp_path / "speech")
    data = write_jsonl(tmp_path / "speech" / "train.jsonl", asr_rows(clips) * 2)
    # Dropout on, shuffled epochs and a decaying rate: the RNG, the data position and the
    # scheduler must all be restored for the weights to match.
    args = ["--model", base, "--data", data, "--max-steps", "20", "--batch-size", "2"]
    args += ["--grad-accum", "2", "--lr", "5e-3", "--warmup-steps", "3", "--save-every", "4"]
    args += ["--keep-last", "2", "--no-tensorboard", "--no-progress"]
    args += ["--full", "--lr", "1e-4"] if mode == "full" else ["--lora-dropout", "0.2"]
    args = [str(a) for a in args]

    straight = tmp_path / "straight"  # in this process, on one thread like the others
    assert train_main(["finetune", *args, "--output", str(straight)]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_command(*args, "--output", killed),
        env=single_thread_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    root = killed / "checkpoints"
    deadline = time.monotonic() + 180
    while not (root / "step-000008").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    weights = "model.safetensors" if mode == "full" else "adapter_model.safetensors"
    assert not (killed / weights).exists()  # it died before the end
    # (the kill may land between writing a checkpoint and deleting the oldest one)
    assert list_checkpoints(root)[-1].name >= "step-000008"

    run_training(*args, "--output", killed, "--resume")
    want = load_file(str(straight / weights))
    got = load_file(str(killed / weights))
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert read_losses(killed) == read_losses(straight)  # the log reads as one run
    assert [p.name for p in list_checkpoints(root)] == ["step-000012", "step-000016"]
