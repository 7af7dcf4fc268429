"""Audio front-end: samples -> log-mel features and audio-token counts, one clip per 30 s window.

Loading lives in `audio_io.py` (`load_audio`, `AudioError`, re-exported here).

Features equal `transformers.WhisperFeatureExtractor` on the frames we return, but cost time in
proportion to the clip. The reference zero-pads every clip to 30 s, takes an STFT of all 3000
frames and normalises with the maximum over the padded clip. Frames that lie entirely in that
zero padding are exactly log10(1e-10) = -10, the smallest value a frame can have, so they never
change the maximum; we therefore take the STFT of the clip plus just enough zeros for the frames
we return, and the result is the same.

What the model sees for each clip (`AudioClip`):
- `num_frames` L = ceil(samples / 160): the valid mel frames (the reference's attention mask).
- `features` (n_mels, F) with F = min(L + 2, 3000): the L valid frames and the two after them,
  which the encoder's stride-2 conv reads for its last output frame; they hold what the reference's
  padded spectrogram holds there, so the last encoder frame matches too.
- `num_tokens` N = (((L - 1) // 2 + 1) - 2) // 2 + 1: the audio embeddings the clip yields.

Long audio (over 30 s) is never cut silently. `long_audio="split"` (the default) makes one clip per
consecutive 30 s window (the last one shorter), each normalised on its own exactly as the
reference would process that window alone; their embeddings follow one another in the prompt.
"truncate" keeps the first 30 s (logged once per process); "error" raises `AudioError`.

Short clips: the reference breaks on clips of 960 samples (60 ms) or less, because they yield a
single audio token and a prompt with one `<|AUDIO|>` is taken for an unexpanded legacy prompt.
Our rule: a clip (or the last window of a long audio) shorter than `MIN_SAMPLES` = 961 samples
is zero-padded at the end to 961 samples (L = 7 frames, N = 2 tokens). Clips of 961 samples or
more are never padded, so every clip the reference accepts gets exactly the reference's features
and token count. Zero-length audio raises `AudioError`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from qwen_audio.audio_io import SAMPLE_RATE, AudioError, load_audio

__all__ = [
    "AudioClip",
    "AudioError",
    "audio_content_hash",
    "load_audio",
    "log_mel_spectrogram",
    "mel_filters",
    "num_audio_tokens",
    "prepare_audio",
]

logger = logging.getLogger(__name__)

N_FFT = 400  # 25 ms STFT window at 16 kHz
HOP_LENGTH = 160  # 10 ms hop: 100 mel frames per second
CHUNK_LENGTH = 30  # seconds of audio the encoder sees at once
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30-second window
MIN_SAMPLES = (
    6 * HOP_LENGTH + 1
)  # 961 samples (60.06 ms): the shortest clip with 7 frames, 2 tokens
LONG_AUDIO_MODES = ("split", "truncate", "error")


@dataclass(frozen=True)
class AudioClip:
    """One <= 30 s window of audio, ready for the encoder."""

    features: torch.Tensor  # (n_mels, F) float32 log-mel, F = min(num_frames + 2, 3000)
    num_frames: int  # L: valid mel frames, ceil(window samples / 160)
    num_tokens: int  # N: audio embeddings the encoder yields for this window
    start_s: float  # window start in the original audio, seconds
    end_s: float  # window end in the original audio, seconds (before any short-clip padding)


def num_audio_tokens(num_samples: int) -> int:
    """Audio tokens `prepare_audio(..., long_audio="split")` yields for `num_samples` samples.

    Per 30 s window: L = ceil(samples / 160), N = (((L - 1) // 2 + 1) - 2) // 2 + 1, after the
    short-clip padding (1.5 s -> 37, 7 s -> 175, 29.9 s -> 747, 30 s -> 750, 31 s -> 750 + 25).
    """
    if num_samples <= 0:
        raise AudioError(f"zero-length audio: num_samples={num_samples}")
    full, rest = divmod(num_samples, N_SAMPLES)
    total = full * _tokens_for_frames(N_FRAMES)
    if rest:
        total += _tokens_for_frames(_num_frames(max(rest, MIN_SAMPLES)))
    return total


def _num_frames(num_samples: int) -> int:
    return -(-num_samples // HOP_LENGTH)  # ceil: the reference's attention mask sum


def _tokens_for_frames(num_frames: int) -> int:
    after_conv = (num_frames - 1) // 2 + 1  # stride-2 conv (kernel 3, padding 1)
    return (after_conv - 2) // 2 + 1  # AvgPool1d(2, stride 2)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney-style mel filter bank (area-normalised triangles on the Slaney mel scale, 0-8 kHz),
    as Whisper and transformers build it. Returns (n_mels, N_FFT // 2 + 1) float32; read-only."""
    n_freqs = N_FFT // 2 + 1  # 201 FFT bins, 0 .. 8000 Hz
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, n_freqs)
    edges_mel = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    edges_hz = _mel_to_hz(edges_mel)  # (n_mels + 2,): lower edge, centre, upper edge of each band
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)  # (n_mels, n_freqs)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    weights *= 2.0 / (upper - lower)  # Slaney norm: every triangle has the same area
    return torch.from_numpy(weights.astype(np.float32))


# The Slaney mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above it, with 27 mel
# per factor 6.4 in frequency.
_F_SP = 200.0 / 3  # Hz per mel in the linear part
_LOG_HZ = 1000.0  # where the log part starts
_LOG_MEL = _LOG_HZ / _F_SP  # 15 mel
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _LOG_MEL + np.log(np.maximum(hz, _LOG_HZ) / _LOG_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_HZ, log_part, hz / _F_SP)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_MEL) - _LOG_MEL))
    return np.where(mel >= _LOG_MEL, log_part, mel * _F_SP)


def log_mel_spectrogram(samples: np.ndarray, n_mels: int = 128) -> torch.Tensor:
    """Log-mel features of one clip of at most 30 s: (n_mels, F) float32, F = min(L + 2, 3000).

    Equal to `WhisperFeatureExtractor(feature_size=n_mels)(samples)[:, :F]`, computed on the clip
    plus just enough zeros (see the module docstring) instead of on 30 s. No short-clip padding
    here; `prepare_audio` applies it.
    """
    x = _check_samples(samples)
    if x.size > N_SAMPLES:
        raise AudioError(
            f"log_mel_spectrogram takes at most {N_SAMPLES} samples (30 s), got {x.size}; "
            "use prepare_audio() to split long audio into windows"
        )
    num_frames = min(_num_frames(x.size) + 2, N_FRAMES)
    # Frame t covers samples [t * 160 - 200, t * 160 + 200) (the STFT is centred). Padding to
    # (F - 1) * 160 + 200 samples puts the last returned frame inside real zeros, like the
    # reference; at 30 s the reference's own length (with its reflected end) is used.
    padded_len = min((num_frames - 1) * HOP_LENGTH + N_FFT // 2, N_SAMPLES)
    wave = torch.zeros(padded_len, dtype=torch.float32)
    wave[: x.size] = torch.from_numpy(x)
    stft = torch.stft(
        wave,
        N_FFT,
        HOP_LENGTH,
        window=torch.hann_window(N_FFT),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )  # (n_fft // 2 + 1, padded_len // 160 + 1)
    power = (stft[:, :num_frames].abs() ** 2).contiguous()  # (201, F)
    mel = mel_filters(n_mels) @ power  # (n_mels, F)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def prepare_audio(samples: np.ndarray, n_mels: int, long_audio: str = "split") -> list[AudioClip]:
    """16 kHz mono samples (as `load_audio` returns them) -> one `AudioClip` per 30 s window.

    `long_audio` decides what happens past 30 s: "split" (default), "truncate" or "error"; see the
    module docstring, which also gives the short-clip rule.
    """
    if long_audio not in LONG_AUDIO_MODES:
        raise AudioError(f"long_audio must be one of {LONG_AUDIO_MODES}, got {long_audio!r}")
    x = _check_samples(samples)
    if x.size > N_SAMPLES:
        if long_audio == "error":
            raise AudioError(
                f"audio is {x.size / SAMPLE_RATE:.2f} s long, over the {CHUNK_LENGTH} s limit "
                "(long_audio='error'); use long_audio='split' or 'truncate'"
            )
        if long_audio == "truncate":
            _log_truncation_once()
            x = x[:N_SAMPLES]
    clips = []
    for start in range(0, x.size, N_SAMPLES):
        window = x[start : start + N_SAMPLES]
        end = start + window.size
        if window.size < MIN_SAMPLES:
            window = np.pad(window, (0, MIN_SAMPLES - window.size))
        num_frames = _num_frames(window.size)
        clips.append(
            AudioClip(
                features=log_mel_spectrogram(window, n_mels),
                num_frames=num_frames,
                num_tokens=_tokens_for_frames(num_frames),
                start_s=start / SAMPLE_RATE,
                end_s=end / SAMPLE_RATE,
            )
        )
    return clips


def audio_content_hash(samples: np.ndarray) -> bytes:
    """A 32-byte key for the content of 16 kHz mono samples (the engine's prefix-cache key)."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    digest = hashlib.blake2b(digest_size=32, person=b"qwen-audio-pcm")
    digest.update(x.size.to_bytes(8, "little"))
    digest.update(x.tobytes())
    return digest.digest()


def _check_samples(samples: np.ndarray) -> np.ndarray:
    if not isinstance(samples, np.ndarray):
        raise AudioError(
            f"samples must be a numpy array of 16 kHz mono audio, got {type(samples).__name__} "
            "(use load_audio() to decode files)"
        )
    if samples.ndim != 1:
        raise AudioError(f"samples must be 1-D (mono), got shape {samples.shape}; use load_audio()")
    if samples.size == 0:
        raise AudioError("zero-length audio (no samples)")
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if not np.isfinite(x).all():
        raise AudioError(f"samples hold {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
    return x


@functools.lru_cache(maxsize=1)
def _log_truncation_once() -> None:
    logger.warning(
        "long_audio='truncate': audio longer than %d s is cut to its first %d s "
        "(this notice is shown once)",
        CHUNK_LENGTH,
        CHUNK_LENGTH,
    )
