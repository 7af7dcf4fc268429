"""The `qwen-audio` command line: chat, transcribe, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import soundfile as sf

from qwen_audio import LLM, SamplingParams
from qwen_audio.cli import main
from tests.conftest import noise_clip


def write_wav(path, seconds, seed=0):
    sf.write(path, noise_clip(seconds, seed=seed), 16000)
    return str(path)


def test_chat_json_prints_one_object_equal_to_the_api(checkpoints, tmp_path, capsys):
    path = checkpoints("mha")
    wav = write_wav(tmp_path / "a.wav", 2.0)
    args = ["chat", "--model", str(path), "--audio", wav, "--prompt", "What is it?"]
    assert (
        main(args + ["--max-tokens", "12", "--temperature", "0", "--dtype", "float32", "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    conv = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": wav}, {"type": "text", "text": "What is it?"}],
        }
    ]
    expected = LLM(path, dtype="float32").chat(conv, SamplingParams(temperature=0, max_tokens=12))
    assert printed == {
        "text": expected[0].text,
        "token_ids": expected[0].token_ids,
        "finish_reason": expected[0].finish_reason,
    }


def test_transcribe_long_file_gives_timed_segments(checkpoints, tmp_path, capsys):
    wav = write_wav(tmp_path / "long.wav", 65.0)
    args = ["transcribe", wav, "--model", str(checkpoints("mha")), "--dtype", "float32"]
    args += ["--segmentation", "fixed"]
    assert main(args + ["--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(s["start"], s["end"]) for s in data["segments"]] == [(0, 30), (30, 60), (60, 65)]
    assert main(args + ["--format", "srt"]) == 0
    srt = capsys.readouterr().out
    assert "00:00:30,000 --> 00:01:00,000" in srt and srt.startswith("1\n")
    assert main(args + ["--format", "vtt"]) == 0
    assert capsys.readouterr().out.startswith("WEBVTT")


def test_bad_input_is_one_clear_line(checkpoints, tmp_path, capsys):
    assert main(["chat", "--model", str(tmp_path / "nowhere"), "--prompt", "hi"]) == 2
    assert "model folder not found" in capsys.readouterr().err
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not really a wav file at all")
    code = main(["chat", "--model", str(checkpoints("mha")), "--audio", str(bad), "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.wav" in err and "Traceback" not in err


def test_interactive_chat_keeps_history_and_attaches_audio(checkpoints, tmp_path):
    wav = write_wav(tmp_path / "q.wav", 1.5)
    script = f"/audio {wav}\n\nand now a follow-up\n/audio {tmp_path / 'missing.wav'}\n/quit\n"
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_audio.cli", "chat", "--model", str(checkpoints("mha"))]
        + ["--max-tokens", "4", "--temperature", "0", "--dtype", "float32"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(attached" in proc.stderr
    assert "missing.wav" in proc.stderr  # a bad file is reported, the chat goes on
    assert proc.stdout.count("> ") >= 3  # prompts for: voice turn, text turn, bad attach, quit


def test_every_command_is_registered():
    from qwen_audio.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("chat", "transcribe", "serve", "eval", "finetune", "export", "bench"):
        assert name in commands


def test_long_audio_policy_flag(checkpoints, tmp_path, capsys):
    wav = write_wav(tmp_path / "long.wav", 31.0)
    args = ["chat", "--model", str(checkpoints("mha")), "--audio", wav, "--prompt", "x"]
    assert main(args + ["--long-audio", "error", "--max-tokens", "2"]) == 2
    assert "30" in capsys.readouterr().err
