"""Speech from espeak-ng, made less clean: voices, rates, pitches, then reverberation and noise.

espeak-ng (1.51 here) writes 22.05 kHz mono; its output is the same for the same version, text and
options, so with seeded augmentation a clip is a pure function of its ``SpeechSpec``.

Voices are an accent (``en-us``, ``en``, ``en-gb-scotland``, ...) plus a *variant* (``+m3``,
``+f2``, ``+Andy``): the variant sets pitch, formants and voice quality, and is where the gender
label comes from (each variant file says ``gender male|female``; those without a gender, robots,
whispers and croaks are left out). Variants in ``HELDOUT_VARIANTS`` are never used for training, so
the held-out eval hears voices the model has not heard.

Speech rate labels come from the rate given to espeak-ng (words per minute), with gaps between the
classes so the label is not a coin toss at a boundary: slow 95-125, normal 155-185, fast 230-280.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from qwen_audio.demo.sounds import SAMPLE_RATE, degrade

ESPEAK = "espeak-ng"
ESPEAK_RATE = 22050
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")  # fmt: skip
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "Diogo", "Henrique",
                 "Hugo", "Lee", "Marco", "Storm", "antonio", "david", "ed", "john", "michel",
                 "miguel", "norbert", "paul", "pedro", "quincy", "robert", "sandro", "travis",
                 "victor", "gustave", "iven", "Mario", "Michael", "Mike", "grandpa", "pablo")  # fmt: skip
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty",
                   "belinda", "linda", "steph", "steph2", "steph3", "grandma")  # fmt: skip
HELDOUT_VARIANTS = frozenset({"m5", "victor", "Henrique", "michel", "f4", "steph2", "Andrea"})
RATES = {"slow": (95, 125), "normal": (155, 185), "fast": (230, 280)}  # words per minute
PITCH_RANGE = (35, 65)  # espeak-ng -p (0-99, 50 default); kept central so gender stays clear


def voices(heldout: bool) -> list[tuple[str, str]]:
    """(variant, gender) pairs of one split."""
    pairs = [(v, "male") for v in MALE_VARIANTS] + [(v, "female") for v in FEMALE_VARIANTS]
    return [(v, g) for v, g in pairs if (v in HELDOUT_VARIANTS) == heldout]


@dataclass(frozen=True)
class SpeechSpec:
    text: str
    accent: str  # espeak-ng voice, e.g. "en-us"
    variant: str  # e.g. "f2"
    gender: str  # "male" | "female"
    rate_class: str  # "slow" | "normal" | "fast"
    wpm: int  # espeak-ng -s
    pitch: int  # espeak-ng -p
    seed: int  # for the augmentation

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"


def espeak_version() -> str:
    out = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def synthesize(spec: SpeechSpec) -> np.ndarray:
    """espeak-ng speech at 16 kHz, float32 in [-1, 1], before augmentation."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = [ESPEAK, "-v", spec.voice, "-s", str(spec.wpm), "-p", str(spec.pitch), "-w", str(wav)]
        subprocess.run([*cmd, spec.text], check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32")
    if sr != ESPEAK_RATE or audio.ndim != 1:
        raise RuntimeError(f"espeak-ng wrote {sr} Hz, {audio.ndim} channels; expected 22050 mono")
    return soxr.resample(audio, ESPEAK_RATE, SAMPLE_RATE, quality="HQ").astype(np.float32)


def render_speech(spec: SpeechSpec, augment: bool = True) -> np.ndarray:
    """The clip the model hears: espeak-ng speech, padded, then reverb and noise (seeded)."""
    rng = np.random.default_rng(spec.seed)
    audio = synthesize(spec)
    if not augment:
        return audio
    return degrade(audio, rng)
