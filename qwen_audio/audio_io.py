"""Turn any audio input into 16 kHz mono float32 samples.

`load_audio` accepts a path (str, `Path` or `file://` URL), encoded bytes, a binary file object,
a `data:` URL, an `http(s)://` URL (only with `allow_remote=True`), or a numpy array / tensor
with its sample rate. Decoding tries soundfile (libsndfile: wav, flac, ogg vorbis/opus, mp3)
first and PyAV (ffmpeg: m4a/aac, webm/opus as browsers record it, and anything else ffmpeg
knows) for the rest. Channels are averaged to mono, then the signal is resampled to 16 kHz with
soxr at "HQ" quality: the same steps, in the same order, as `librosa.load(path, sr=16000)`, which
the Qwen2-Audio examples use, so our samples match what the model was evaluated on.

Every bad input raises `AudioError` (a `ValueError`) whose message names the source and the
problem; errors from the decoders never escape as another type.
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

_URL_RE = re.compile(r"^(data:|[a-zA-Z][a-zA-Z0-9+.-]*://)")  # "data:..." or "scheme://..."

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray


class AudioError(ValueError):
    """A bad audio input: the message names the source (file, URL, field) and the problem."""


def load_audio(
    source: AudioSource,
    sampling_rate: int | None = None,
    *,
    allow_remote: bool = False,
    max_bytes: int | None = None,
    timeout: float = 30.0,
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
    """
    if isinstance(source, np.ndarray) or hasattr(source, "__dlpack__"):
        return _from_array(source, sampling_rate)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_size("audio bytes", len(data), max_bytes)
        return _decode(io.BytesIO(data), "audio bytes", sampling_rate)
    if isinstance(source, str) and _URL_RE.match(source):
        return _from_url(source, sampling_rate, allow_remote, max_bytes, timeout)
    if isinstance(source, (str, os.PathLike)):
        if not str(source):
            raise AudioError("audio path is empty")
        return _from_path(Path(source), sampling_rate, max_bytes)
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "file object"))
        data = _read_limited(source, name, max_bytes)
        return _decode(io.BytesIO(data), name, sampling_rate)
    raise AudioError(
        f"unsupported audio source of type {type(source).__name__}: expected a path, URL, bytes, "
        "a binary file object or a numpy array with its sampling_rate"
    )


# ----------------------------------------------------------------------------- sources


def _from_array(array, sampling_rate: int | None) -> np.ndarray:
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
    return _finish(_to_float32(array, name), int(sampling_rate), name)


def _to_float32(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "i":  # signed PCM: full scale is 2 ** (bits - 1)
        return (array / float(2 ** (8 * array.dtype.itemsize - 1))).astype(np.float32)
    if array.dtype.kind == "u":  # unsigned PCM (8-bit wav): centred on the mid value
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array - half) / half).astype(np.float32)
    raise AudioError(f"{name}: samples must be float or integer PCM, got dtype {array.dtype}")


def _from_path(path: Path, sampling_rate: int | None, max_bytes: int | None) -> np.ndarray:
    name = str(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise AudioError(f"{name}: is a directory, not an audio file")
        with path.open("rb") as f:
            _check_size(name, size, max_bytes)
            # Opened here rather than handing the name to ffmpeg, which would interpret
            # protocol prefixes such as "concat:" inside a file name.
            return _decode(f, name, sampling_rate)
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
        return _decode(io.BytesIO(data), name, sampling_rate)
    if scheme == "file":
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise AudioError(f"{url}: file:// URLs must name a local file (host {parsed.netloc!r})")
        path = urllib.request.url2pathname(urllib.parse.unquote(parsed.path))
        return _from_path(Path(path), sampling_rate, max_bytes)
    if scheme in ("http", "https"):
        if not allow_remote:
            raise AudioError(
                f"{url}: remote audio is disabled; pass allow_remote=True to fetch http(s) URLs"
            )
        data = _fetch(url, max_bytes, timeout)
        return _decode(io.BytesIO(data), url, sampling_rate)
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


def _decode(f: BinaryIO, name: str, sampling_rate: int | None) -> np.ndarray:
    """Decode a seekable binary stream to 16 kHz mono; soundfile first, PyAV for the rest."""
    head = f.read(64)
    f.seek(0)
    try:
        samples, rate = sf.read(f, dtype="float32", always_2d=True)  # (samples, channels)
        samples = samples.T  # (channels, samples)
    except Exception:  # libsndfile does not know this format (or failed): let ffmpeg try
        f.seek(0)
        samples, rate = _decode_with_av(f, name, head)
    if sampling_rate is not None and sampling_rate != rate:
        raise AudioError(
            f"{name}: sampling_rate={sampling_rate} disagrees with the file's rate of {rate} Hz "
            "(sampling_rate describes array input; the output is always 16 kHz)"
        )
    return _finish(samples, rate, name)


def _decode_with_av(f: BinaryIO, name: str, head: bytes) -> tuple[np.ndarray, int]:
    try:
        with av.open(f, mode="r") as container:
            if not container.streams.audio:
                raise _decode_error(name, head, "no audio stream")
            stream = container.streams.audio[0]
            resampler = None
            chunks = []
            for frame in container.decode(stream):
                if resampler is None:  # float planar at the first frame's layout and rate
                    rate = frame.sample_rate
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())  # (channels, samples)
            if resampler is None:
                raise _decode_error(name, head, "the audio stream holds no frames")
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray())
    except AudioError:
        raise
    except Exception as e:  # av.error.FFmpegError and anything else from the decoder
        detail = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise _decode_error(name, head, detail) from e
    return np.concatenate(chunks, axis=1), rate


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


def _finish(samples: np.ndarray, rate: int, name: str) -> np.ndarray:
    """(channels, samples) at `rate` -> 1-D float32 at 16 kHz, with the checks every input needs."""
    if samples.shape[-1] == 0:
        raise AudioError(f"{name}: zero-length audio (no samples)")
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int((~finite).sum())
        first = int(np.flatnonzero(~finite.all(axis=0))[0])
        raise AudioError(f"{name}: {bad} NaN/inf sample(s), the first at sample {first}")
    mono = samples.mean(axis=0, dtype=np.float32)  # (samples,): average the channels
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)
        if mono.size == 0:  # a handful of samples can round down to nothing
            raise AudioError(
                f"{name}: too short to resample from {rate} Hz ({samples.shape[-1]} samples)"
            )
    return np.ascontiguousarray(mono, dtype=np.float32)
