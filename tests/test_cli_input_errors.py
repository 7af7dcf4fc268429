"""Input mistakes are reported before the model loads, in the CLI's words (issue 17).

`_load` is replaced by a function that fails the test if called: every error below must come
from the checks that run first.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import soundfile as sf

import qwen_audio.cli as cli
from qwen_audio.cli import main
from qwen_audio.cli_inputs import cli_words
from tests.conftest import noise_clip


class Loaded(Exception):
    """Raised instead of loading a model: the checks before it passed."""


@pytest.fixture
def no_load(monkeypatch):
    def load(args):
        raise Loaded(args)

    monkeypatch.setattr(cli, "_load", load)


def wav(path, seconds=1.0) -> str:
    sf.write(path, noise_clip(seconds), 16000)
    return str(path)


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.usefixtures("no_load")
def test_audio_mistakes_are_found_before_the_model_loads(tmp_path, capsys):
    err = error_of(["chat", "--audio", str(tmp_path / "missing.wav"), "--prompt", "x"], capsys)
    assert "audio file not found" in err and "missing.wav" in err
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not really a wav file at all")
    assert "bad.wav" in error_of(["chat", "--audio", str(bad), "--prompt", "x"], capsys)
    assert "missing.wav" in error_of(["transcribe", str(tmp_path / "missing.wav")], capsys)
    assert "is a directory" in error_of(["transcribe", str(tmp_path)], capsys)
    err = error_of(["chat", "--audio", "https://example.com/a.wav", "--prompt", "x"], capsys)
    assert "--allow-remote-audio" in err


@pytest.mark.usefixtures("no_load")
def test_long_audio_error_is_reported_with_the_option_as_typed(tmp_path, capsys):
    long = wav(tmp_path / "long.wav", 31.0)
    err = error_of(["chat", "--audio", long, "--long-audio", "error", "--prompt", "x"], capsys)
    assert "--long-audio error" in err and "31.0 s" in err
    assert "long_audio=" not in err and "message 0" not in err
    with pytest.raises(Loaded):  # split (the default) accepts it
        main(["chat", "--audio", long, "--prompt", "x"])


@pytest.mark.usefixtures("no_load")
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-tokens", "0", "--max-tokens must be >= 1"),
        ("--top-p", "2", "--top-p must be in (0, 1]"),
        ("--temperature", "-1", "--temperature must be >= 0"),
        ("--top-k", "-5", "--top-k must be"),
    ],
)
def test_bad_option_values_are_found_before_the_model_loads(option, value, message, capsys):
    assert message in error_of(["chat", "--prompt", "x", option, value], capsys)


@pytest.mark.usefixtures("no_load")
def test_a_tilde_path_is_expanded_before_it_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = wav(tmp_path / "clip.wav")
    with pytest.raises(Loaded) as loaded:
        main(["chat", "--audio", "~/clip.wav", "--prompt", "x"])
    assert loaded.value.args[0].audio == [path]


def test_a_file_given_as_model_is_called_a_file(tmp_path, capsys):
    path = wav(tmp_path / "some.wav")
    err = error_of(["chat", "--model", path, "--prompt", "x"], capsys)
    assert "is a file, not a model folder" in err


def test_a_folder_without_config_is_not_a_model_folder(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    err = error_of(["chat", "--model", str(tmp_path / "clips"), "--prompt", "x"], capsys)
    assert "is not a model folder: it has no config.json" in err


def test_an_uncached_hub_id_names_allow_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    err = error_of(["chat", "--model", "Qwen/No-Such-Model", "--prompt", "x"], capsys)
    assert "--allow-download" in err and "local_files_only" not in err
    assert "allow_download=True" not in err


def test_allow_download_without_network_says_the_download_failed(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hf"), MODELSCOPE_CACHE=str(tmp_path))
    env.pop("HF_HUB_OFFLINE", None)
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_audio.cli", "chat", "--model", "Qwen/No-Such-Model"]
        + ["--allow-download", "--prompt", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: downloading 'Qwen/No-Such-Model'")
    assert "failed" in proc.stderr and "not in the" not in proc.stderr


@pytest.mark.parametrize(
    "library, cli_text",
    [
        (
            "message 0, part 0: audio is 45.00 s long, over the 30 s limit "
            "(long_audio='error'); use long_audio='split' or 'truncate'",
            "audio is 45.00 s long, over the 30 s limit (--long-audio error); "
            "use --long-audio split or truncate",
        ),
        ("max_tokens must be >= 1", "--max-tokens must be >= 1"),
        ("device='cuda' was requested", "--device cuda was requested"),
        ("pass allow_remote=True to fetch", "pass --allow-remote-audio to fetch"),
        ("a CUDA device is available", "a CUDA device is available"),
    ],
)
def test_library_messages_in_cli_words(library, cli_text):
    assert cli_words(library) == cli_text
