"""Turn any audio input into 16 kHz mono float32 samples.

`load_audio` accepts a path (str, `Path` or `file://` URL), encoded bytes, a binary file object,
a `data:` URL, an `http(s)://` URL (only with `allow_remote=True`), or a numpy array / tensor
with its sample rate. Decoding tries soundfile (libsndfile: wav, flac, ogg vorbis/opus, mp3)
first and PyAV (ffmpeg: m4a/aac, webm/opus as browsers record it, and anything else ffmpeg
knows) for the rest. Channels are averaged to mono, then the signal is resampled to 16 kHz with
soxr at "HQ" quality: the same steps, in the same order, as `librosa.load(path, sr=16000)`, which
the Qwen2-Audio examples use, so our samples match what the model was evaluated on.

What one audio may cost is bounded by `AudioLimits` (sample rate, channels, seconds, decoded
samples): read from the container's header before anything is decoded, for libsndfile's formats
and FFmpeg's alike, then counted again while decoding, block by block, so a header that lies
cannot help. Decoding, channel mixing and resampling all run block by block, so memory holds the
16 kHz output and one block, never the file's samples at their own rate and channel count.

Every bad input raises `AudioError` (a `ValueError`) whose message names the source and the
problem (`AudioLimitError` for an input over a limit); errors from the decoders never escape as
another type.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # Hz: the rate of every array load_audio returns
RESAMPLE_QUALITY = "HQ"  # soxr preset (librosa's default "soxr_hq"); about 20-bit precision
MAX_CHANNELS = 32  # a 2-D array whose shorter axis is longer than this has no channel axis
SUPPORTED_FORMATS = "wav, flac, ogg/opus, mp3, m4a/aac, webm"
DECODE_BLOCK = 1 << 16  # frames per libsndfile read: 4 s at 16 kHz, 2 MB of float32 at 8 channels

_URL_RE = re.compile(r"^(data:|[a-zA-Z][a-zA-Z0-9+.-]*://)")  # "data:..." or "scheme://..."

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray


class AudioError(ValueError):
    """A bad audio input: the message names the source (file, URL, field) and the problem."""


class AudioLimitError(AudioError):
    """An audio over one of its `AudioLimits`; `limit` names the field it broke."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit  # "max_seconds", "max_samples", "sample_rate" or "max_channels"


@dataclass(frozen=True)
class AudioLimits:
    """What loading one audio may cost. The defaults only refuse what no real recording is:
    a server passes its own seconds and samples bounds."""

    max_seconds: float | None = None  # length of the signal
    max_samples: int | None = None  # channels x frames decoded at the file's own rate
    # Hz. Resampling to 16 kHz multiplies the samples by 16000 / rate: a 1 Hz file of 60 KB
    # would become gigabytes. 4 kHz (narrowband speech is 8 kHz) to 384 kHz (studio) is real.
    min_rate: int = 4000
    max_rate: int = 384000
    max_channels: int = MAX_CHANNELS

    def check_format(self, name: str, rate: int, channels: int) -> None:
        if not self.min_rate <= rate <= self.max_rate:
            raise AudioLimitError(
                f"{name}: a sample rate of {rate:,} Hz is outside the accepted "
                f"{self.min_rate:,}-{self.max_rate:,} Hz",
                "sample_rate",
            )
        if channels > self.max_channels:
            raise AudioLimitError(
                f"{name}: {channels} channels; at most {self.max_channels} are accepted",
                "max_channels",
            )

    def check_length(
        self,
        name: str,
        rate: int,
        channels: int,
        frames: int,
        *,
        decoding: bool = False,
        slack_s: float = 0.0,
    ) -> None:
        """`frames` at `rate`: from the header (`slack_s` where it is an estimate), or
        (`decoding`) those decoded so far."""
        seconds = frames / rate
        if self.max_seconds is not None and seconds - slack_s > self.max_seconds:
            length = f"over {self.max_seconds:g} s" if decoding else f"{seconds:.1f} s"
            raise AudioLimitError(
                f"{name}: audio is {length} long; the limit is {self.max_seconds:g} s",
                "max_seconds",
            )
        if self.max_samples is not None and channels * (frames - slack_s * rate) > self.max_samples:
            held = (
                f"over {self.max_samples:,}"
                if decoding
                else f"{channels} x {frames:,} = {channels * frames:,}"
            )
            raise AudioLimitError(
                f"{name}: audio holds {held} samples (channels x frames at {rate:,} Hz); "
                f"the limit is {self.max_samples:,}",
                "max_samples",
            )


DEFAULT_LIMITS = AudioLimits()


def load_audio(
    source: AudioSource,
    sampling_rate: int | None = None,
    *,
    allow_remote: bool = False,
    max_bytes: int | None = None,
    timeout: float = 30.0,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Load `source` as a 1-D float32 array of 16 kHz mono samples.

    - `sampling_rate`: the rate of `source` when it is an array (required then). Encoded audio
      carries its own rate; a `sampling_rate` that disagrees with it raises, because silently
      ignoring it would hide a mistake. The output is always 16 kHz.
    - Arrays: 1-D, or 2-D with the channels on the shorter axis ((channels, samples) or
      (samples, channels); a square array is read as (channels, samples)). Integer PCM is
      scaled to [-1, 1) (int16 / 32768 and so on).
    - `allow_remote`: fetch `http(s)://` URLs; off by default so a server never fetches
      arbitrary URLs by accident. `data:` and `file://` URLs always work.
    - `max_bytes`: refuse encoded input larger than this (file, bytes, URL). `timeout`: the
      socket timeout of a remote fetch, in seconds.
    - `limits`: sample rate, channels, seconds and decoded samples (`AudioLimits`), checked
      before the expensive work; `AudioLimitError` names the one broken.
    """
    if isinstance(source, np.ndarray) or hasattr(source, "__dlpack__"):
        return _from_array(source, sampling_rate, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_size("audio bytes", len(data), max_bytes)
        return _decode(io.BytesIO(data), "audio bytes", sampling_rate, limits)
    if isinstance(source, str) and _URL_RE.match(source):
        return _from_url(source, sampling_rate, allow_remote, max_bytes, timeout, limits)
    if isinstance(source, (str, os.PathLike)):
        if not str(source):
            raise AudioError("audio path is empty")
        return _from_path(Path(source), sampling_rate, max_bytes, limits)
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "file object"))
        data = _read_limited(source, name, max_bytes)
        return _decode(io.BytesIO(data), name, sampling_rate, limits)
    raise AudioError(
        f"unsupported audio source of type {type(source).__name__}: expected a path, URL, bytes, "
        "a binary file object or a numpy array with its sampling_rate"
    )


# ----------------------------------------------------------------------------- sources


def _from_array(array, sampling_rate: int | None, limits: AudioLimits) -> np.ndarray:
    name = "audio array"
    if not isinstance(array, np.ndarray):  # a torch tensor or another array library
        try:
            if hasattr(array, "detach"):  # torch: bfloat16/float16 have no numpy twin
                array = array.detach().cpu()
                array = array.float() if array.is_floating_point() else array
            array = np.asarray(array)
        except Exception as e:
            raise AudioError(f"{name}: cannot convert {type(array).__name__} to numpy: {e}") from e
    if sampling_rate is None:
        raise AudioError(
            f"{name}: sampling_rate is required for array input (the array does not say its rate)"
        )
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)):
        raise AudioError(f"{name}: sampling_rate must be an int in Hz, got {sampling_rate!r}")
    if sampling_rate <= 0:
        raise AudioError(f"{name}: sampling_rate must be positive, got {sampling_rate}")
    if array.ndim not in (1, 2):
        raise AudioError(f"{name}: expected 1-D or 2-D audio, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise AudioError(f"{name}: zero-length audio (shape {tuple(array.shape)})")
    if array.ndim == 2:
        if min(array.shape) > MAX_CHANNELS:
            raise AudioError(
                f"{name}: shape {tuple(array.shape)} has no channel axis (the shorter axis is "
                f"the channels and may have at most {MAX_CHANNELS})"
            )
        if array.shape[0] > array.shape[1]:
            array = array.T  # (samples, channels) -> (channels, samples)
    else:
        array = array[None]  # (1, samples)
    samples = _to_float32(array, name)  # (channels, frames)
    out = _Output(name, int(sampling_rate), samples.shape[0], limits)
    limits.check_length(name, out.rate, out.channels, samples.shape[1])
    out.push(samples)
    return out.finish()


def _to_float32(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "i":  # signed PCM: full scale is 2 ** (bits - 1)
        return (array / float(2 ** (8 * array.dtype.itemsize - 1))).astype(np.float32)
    if array.dtype.kind == "u":  # unsigned PCM (8-bit wav): centred on the mid value
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array - half) / half).astype(np.float32)
    raise AudioError(f"{name}: samples must be float or integer PCM, got dtype {array.dtype}")


def _from_path(
    path: Path, sampling_rate: int | None, max_bytes: int | None, limits: AudioLimits
) -> np.ndarray:
    name = str(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise AudioError(f"{name}: is a directory, not an audio file")
        with path.open("rb") as f:
            _check_size(name, size, max_bytes)
            # Opened here rather than handing the name to ffmpeg, which would interpret
            # protocol prefixes such as "concat:" inside a file name.
            return _decode(f, name, sampling_rate, limits)
    except FileNotFoundError as e:
        raise AudioError(f"audio file not found: {name}") from e
    except OSError as e:
        raise AudioError(f"{name}: cannot read audio file: {e.strerror or e}") from e


def _from_url(
    url: str,
    sampling_rate: int | None,
    allow_remote: bool,
    max_bytes: int | None,
    timeout: float,
    limits: AudioLimits,
) -> np.ndarray:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        name = "data: URL"
        header, sep, payload = url[5:].partition(",")
        if not sep:
            raise AudioError(f"{name}: malformed, no ',' between the header and the data")
        try:
            if header.lower().endswith(";base64"):
                data = base64.b64decode(payload, validate=True)
            else:
                data = urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as e:
            raise AudioError(f"{name}: invalid base64 data: {e}") from e
        _check_size(name, len(data), max_bytes)
        return _decode(io.BytesIO(data), name, sampling_rate, limits)
    if scheme == "file":
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise AudioError(f"{url}: file:// URLs must name a local file (host {parsed.netloc!r})")
        path = urllib.request.url2pathname(urllib.parse.unquote(parsed.path))
        return _from_path(Path(path), sampling_rate, max_bytes, limits)
    if scheme in ("http", "https"):
        if not allow_remote:
            raise AudioError(
                f"{url}: remote audio is disabled; pass allow_remote=True to fetch http(s) URLs"
            )
        data = _fetch(url, max_bytes, timeout)
        return _decode(io.BytesIO(data), url, sampling_rate, limits)
    raise AudioError(
        f"{url}: unsupported URL scheme {scheme!r} (use a path, file://, data: or http(s)://)"
    )


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow them to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"refusing redirect to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(url: str, max_bytes: int | None, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "qwen-audio"})
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit():
                _check_size(url, int(length), max_bytes)
            return _read_limited(response, url, max_bytes)
    except urllib.error.HTTPError as e:
        raise AudioError(f"{url}: HTTP error {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise AudioError(f"{url}: cannot fetch audio: {e.reason}") from e
    except (TimeoutError, OSError) as e:
        raise AudioError(f"{url}: cannot fetch audio: {e}") from e


def _read_limited(f, name: str, max_bytes: int | None) -> bytes:
    try:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as e:
        raise AudioError(f"{name}: cannot read audio: {e}") from e
    if isinstance(data, str):
        raise AudioError(f"{name}: file object is in text mode; open it with mode 'rb'")
    if not isinstance(data, (bytes, bytearray)):
        raise AudioError(f"{name}: read() returned {type(data).__name__}, expected bytes")
    _check_size(name, len(data), max_bytes)
    return bytes(data)


def _check_size(name: str, size: int, max_bytes: int | None) -> None:
    if size == 0:
        raise AudioError(f"{name}: empty audio (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise AudioError(f"{name}: audio is larger than the limit of {max_bytes} bytes")


# ----------------------------------------------------------------------------- decoding


def _decode(f: BinaryIO, name: str, sampling_rate: int | None, limits: AudioLimits) -> np.ndarray:
    """Decode a seekable binary stream to 16 kHz mono; libsndfile first, PyAV for the rest."""
    head = f.read(64)
    f.seek(0)
    try:
        out = _decode_with_soundfile(f, name, limits)
    except AudioError:
        raise
    except Exception:  # libsndfile does not know this format (or failed): let ffmpeg try
        f.seek(0)
        out = _decode_with_av(f, name, head, limits)
    if sampling_rate is not None and sampling_rate != out.rate:
        raise AudioError(
            f"{name}: sampling_rate={sampling_rate} disagrees with the file's rate of {out.rate} Hz "
            "(sampling_rate describes array input; the output is always 16 kHz)"
        )
    return out.finish()


def _decode_with_soundfile(f: BinaryIO, name: str, limits: AudioLimits) -> _Output:
    """libsndfile's formats (WAV, FLAC, OGG, MP3, AIFF, CAF, MAT4/5, HTK, SDS, MPC2K, ...): the
    header's rate, channels and frames are checked before the first block is read."""
    with sf.SoundFile(f) as snd:
        out = _Output(name, snd.samplerate, snd.channels, limits)
        limits.check_length(name, out.rate, out.channels, snd.frames)
        while True:
            block = snd.read(DECODE_BLOCK, dtype="float32", always_2d=True)  # (frames, channels)
            if not len(block):
                return out
            out.push(block.T)  # (channels, frames)


def _decode_with_av(f: BinaryIO, name: str, head: bytes, limits: AudioLimits) -> _Output:
    """FFmpeg's formats (m4a/aac, webm, opus, ...): the stream's rate, channels and duration
    (when the container gives one) are checked before decoding, every frame while decoding."""
    try:
        with av.open(f, mode="r") as container:
            if not container.streams.audio:
                raise _decode_error(name, head, "no audio stream")
            stream = container.streams.audio[0]
            context = stream.codec_context
            if context.sample_rate:
                limits.check_format(name, context.sample_rate, context.channels)
                if stream.duration is not None and stream.time_base is not None:
                    rate = context.sample_rate
                    frames = int(stream.duration * stream.time_base * rate)
                    # an estimate: half a second of slack here, the decoded frames count exactly
                    limits.check_length(name, rate, context.channels or 1, frames, slack_s=0.5)
            out = resampler = None
            for frame in container.decode(stream):
                if resampler is None:  # float planar at the first frame's layout and rate
                    out = _Output(name, frame.sample_rate, frame.layout.nb_channels, limits)
                    resampler = av.AudioResampler(
                        format="fltp", layout=frame.layout, rate=frame.sample_rate
                    )
                for converted in resampler.resample(frame):
                    out.push(converted.to_ndarray())  # (channels, frames)
            if resampler is None:
                raise _decode_error(name, head, "the audio stream holds no frames")
            for converted in resampler.resample(None):  # flush
                out.push(converted.to_ndarray())
    except AudioError:
        raise
    except Exception as e:  # av.error.FFmpegError and anything else from the decoder
        detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise _decode_error(name, head, detail) from e
    return out


class _Output:
    """The 16 kHz mono output of one audio, built block by block as it is decoded: each block
    (channels, frames) at the source rate is counted against the limits, checked for NaN/inf,
    averaged to mono and resampled at once, so only the output and one block are in memory."""

    def __init__(self, name: str, rate: int, channels: int, limits: AudioLimits):
        limits.check_format(name, rate, channels)
        self.name, self.rate, self.channels, self.limits = name, rate, channels, limits
        self.frames = 0  # decoded so far, at `rate`
        self.bad = 0  # NaN/inf samples
        self.first_bad: int | None = None  # the frame that holds the first one
        self.chunks: list[np.ndarray] = []  # 16 kHz mono
        self.resampler = (
            None
            if rate == SAMPLE_RATE
            else soxr.ResampleStream(
                rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )
        )

    def push(self, block: np.ndarray) -> None:
        """`block`: (channels, frames) float32."""
        if block.shape[0] != self.channels:
            raise AudioError(f"{self.name}: the channel count changes inside the audio")
        start = self.frames
        self.frames += block.shape[1]
        self.limits.check_length(self.name, self.rate, self.channels, self.frames, decoding=True)
        finite = np.isfinite(block)
        if not finite.all():
            self.bad += int((~finite).sum())
            if self.first_bad is None:
                self.first_bad = start + int(np.flatnonzero(~finite.all(axis=0))[0])
        if self.bad:
            return  # only counted from here on: the audio will be refused
        mono = block.mean(axis=0, dtype=np.float32)  # (frames,): average the channels
        if self.resampler is not None:  # soxr's stream gives exactly what one call on all would
            mono = self.resampler.resample_chunk(mono)
        self.chunks.append(mono)

    def finish(self) -> np.ndarray:
        """The 1-D float32 samples at 16 kHz."""
        if self.frames == 0:
            raise AudioError(f"{self.name}: zero-length audio (no samples)")
        if self.bad:
            raise AudioError(
                f"{self.name}: {self.bad} NaN/inf sample(s), the first at sample {self.first_bad}"
            )
        if self.resampler is not None:
            self.chunks.append(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        mono = self.chunks[0] if len(self.chunks) == 1 else np.concatenate(self.chunks)
        if mono.size == 0:  # a handful of samples can round down to nothing
            raise AudioError(
                f"{self.name}: too short to resample from {self.rate} Hz ({self.frames} samples)"
            )
        return np.ascontiguousarray(mono, dtype=np.float32)


_SIGNATURES = {  # how a header starts -> the format it announces
    b"RIFF": "wav",
    b"RIFX": "wav",
    b"fLaC": "flac",
    b"OggS": "ogg",
    b"ID3": "mp3",
    b"\x1a\x45\xdf\xa3": "webm/matroska",
    b"FORM": "aiff",
}


def _sniff(head: bytes) -> str | None:
    for magic, kind in _SIGNATURES.items():
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "mp4/m4a"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mp3/aac"  # an MPEG audio frame sync word
    return None


def _decode_error(name: str, head: bytes, detail: str) -> AudioError:
    kind = _sniff(head)
    if kind is not None:
        return AudioError(f"{name}: cannot decode {kind} audio, the data is corrupt ({detail})")
    looks_like_text = head and all(b in b"\t\n\r" or 32 <= b < 127 for b in head)
    what = "the data looks like text, not audio" if looks_like_text else "unrecognised data"
    return AudioError(
        f"{name}: unsupported audio format ({what}; supported: {SUPPORTED_FORMATS}) [{detail}]"
    )
