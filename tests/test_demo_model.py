"""The demo model that ships in the package (qwen_audio/assets/demo-model, issue 7).

`LLM()` without a path loads it; it must transcribe the shipped held-out sample exactly and name
the shipped sound, in float32 and in the dtype `auto` picks on this machine, and say whether the
sample's voice is male or female (the recipe picks a sample it got right in all of these).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_audio import LLM, SamplingParams
from qwen_audio.demo.tasks import EVAL_ASR_PROMPT, EVAL_SOUND_PROMPT, EVAL_VOICE_PROMPT
from qwen_audio.llm import default_model_path

ASSETS = Path(__file__).resolve().parents[1] / "qwen_audio" / "assets"
MODEL = ASSETS / "demo-model"
SAMPLES = json.loads((ASSETS / "samples" / "samples.json").read_text())


@pytest.fixture(autouse=True)
def _no_model_override(monkeypatch):
    monkeypatch.delenv("QWEN_AUDIO_MODEL", raising=False)


def test_llm_without_a_path_is_the_bundled_demo_model():
    assert default_model_path() == MODEL
    config = json.loads((MODEL / "config.json").read_text())
    assert config["model_type"] == "qwen2_audio"
    assert config["audio_config"]["num_mel_bins"] == 80  # Whisper tiny.en's encoder


def test_the_demo_model_is_small_and_float16():
    from safetensors import safe_open

    total = sum(p.stat().st_size for p in MODEL.iterdir())
    assert total <= 30 * 2**20, f"{total / 2**20:.1f} MiB"
    with safe_open(str(MODEL / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"F16"}


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_demo_model_transcribes_the_shipped_sample_and_names_the_sound(dtype):
    llm = LLM(dtype=dtype)
    greedy = SamplingParams(temperature=0.0, max_tokens=64)

    def ask(sample: str, prompt: str) -> str:
        conversation = [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": str(ASSETS / "samples" / sample)},
                    {"type": "text", "text": prompt},
                ],
            }
        ]
        return llm.chat(conversation, greedy)[0].text.strip()

    assert SAMPLES["speech.wav"]["prompt"] == EVAL_ASR_PROMPT
    assert ask("speech.wav", EVAL_ASR_PROMPT) == SAMPLES["speech.wav"]["gt"]
    assert ask("speech.wav", EVAL_VOICE_PROMPT) == SAMPLES["speech.wav"]["voice"]["gender"]
    sound = next(name for name in SAMPLES if name != "speech.wav")
    assert ask(sound, EVAL_SOUND_PROMPT) == SAMPLES[sound]["gt"]


def test_chat_cli_without_model_uses_the_demo_model():
    speech = ASSETS / "samples" / "speech.wav"
    cmd = [sys.executable, "-m", "qwen_audio.cli", "chat", "--audio", str(speech)]
    cmd += ["--prompt", EVAL_ASR_PROMPT, "--temperature", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert SAMPLES["speech.wav"]["gt"] in out.stdout
