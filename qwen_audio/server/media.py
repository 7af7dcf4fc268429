"""Audio inputs of API requests: base64 and data: URLs, allow-listed local files, remote URLs.

Every source ends as bytes that go through the package's one audio loader
(`qwen_audio.audio.load_audio`), giving 16 kHz mono float32 samples for the engine. Limits:
audio bytes per request (`--max-upload-mb`), seconds per audio, audios per request. Local paths
(`file://`) only under `--allowed-local-media-path`; http(s) only with `--allow-remote-audio`,
through the SSRF-safe fetcher of `remote.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import urllib.parse
from pathlib import Path

import numpy as np

from .protocol import APIError
from .remote import RemoteFetcher, too_large, url_error
from .settings import ServerSettings

SAMPLE_RATE = 16000  # what load_audio returns and the engine takes


def decode_audio(data: bytes) -> np.ndarray:
    """Bytes in any supported container -> 16 kHz mono float32 samples."""
    # Imported on first use: the package's one audio loader (and its heavier imports).
    from qwen_audio.audio import load_audio

    return load_audio(data)


def probe_seconds(data: bytes) -> float | None:
    """Duration from the container's packets without decoding, so an over-long file is refused
    before it is expanded in memory (25 MB of low-bitrate Opus would be days of samples).
    None when the container cannot be read; the decoder then reports the problem."""
    import av  # the decoder behind load_audio; demuxing only here

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None or stream.time_base is None:
                return None
            end = 0
            for packet in container.demux(stream):
                if packet.pts is not None:
                    end = max(end, packet.pts + (packet.duration or 0))
            return float(end * stream.time_base)
    except Exception:  # any container error: leave the verdict to the decoder
        return None


class RequestMedia:
    """The audios of one request, checked against the per-request limits as they arrive."""

    def __init__(self, settings: ServerSettings, fetcher: RemoteFetcher | None):
        self.settings = settings
        self.fetcher = fetcher
        self.count = 0
        self.bytes_left = settings.max_upload_bytes

    def check_count(self, n: int, param: str | None = None) -> None:
        if n > self.settings.max_audios_per_request:
            raise APIError(
                400,
                f"{n} audios in one request; the limit is {self.settings.max_audios_per_request}",
                param=param,
                code="too_many_audios",
            )

    async def from_base64(self, data: str, param: str | None = None) -> np.ndarray:
        if data.startswith("data:"):
            return await self.from_bytes(self._data_url(data, param), param)
        if len(data) * 3 // 4 > self.bytes_left + 3:
            raise too_large(self.settings.max_upload_bytes, param)
        try:
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise APIError(
                400, "audio data is not valid base64", param=param, code="invalid_base64"
            ) from None
        return await self.from_bytes(raw, param)

    async def from_url(self, url: str, param: str | None = None) -> np.ndarray:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return await self.from_bytes(self._data_url(url, param), param)
        if scheme == "file" or url.startswith("/"):
            return await self.from_bytes(await self._local(url, param), param)
        if scheme in ("http", "https"):
            if not self.settings.allow_remote_audio or self.fetcher is None:
                raise url_error(
                    "remote audio URLs are disabled (start the server with --allow-remote-audio)",
                    param=param,
                )
            data = await self.fetcher.fetch(url, self.bytes_left, param)
            return await self.from_bytes(data, param)
        raise url_error(f"unsupported audio URL scheme {scheme!r}", param=param)

    async def from_bytes(self, data: bytes, param: str | None = None) -> np.ndarray:
        self.count += 1
        self.check_count(self.count, param)
        if len(data) > self.bytes_left:
            raise too_large(self.settings.max_upload_bytes, param)
        self.bytes_left -= len(data)
        if not data:
            raise APIError(400, "audio is empty", param=param, code="empty_audio")
        max_s = self.settings.max_audio_seconds
        seconds = await asyncio.to_thread(probe_seconds, data)
        if seconds is not None and seconds > max_s + 0.5:  # containers round their durations
            raise audio_too_long(seconds, max_s, param)
        try:
            samples = await asyncio.to_thread(decode_audio, data)
        except Exception as e:  # a corrupt file must give a 400, whatever the decoder raises
            message = str(e) or type(e).__name__
            raise APIError(
                400, f"cannot decode audio: {message}", param=param, code="invalid_audio"
            ) from None
        samples = np.asarray(samples, dtype=np.float32)
        if samples.size == 0:
            raise APIError(400, "audio has no samples", param=param, code="empty_audio")
        if samples.size > max_s * SAMPLE_RATE:
            raise audio_too_long(samples.size / SAMPLE_RATE, max_s, param)
        return samples

    def _data_url(self, url: str, param: str | None) -> bytes:
        header, sep, payload = url.partition(",")
        if not sep:
            raise APIError(400, "malformed data: URL", param=param, code="invalid_url")
        if len(payload) * 3 // 4 > self.bytes_left + 3:
            raise too_large(self.settings.max_upload_bytes, param)
        if header.endswith(";base64"):
            try:
                return base64.b64decode("".join(payload.split()), validate=True)
            except (binascii.Error, ValueError):
                raise APIError(
                    400, "data: URL is not valid base64", param=param, code="invalid_base64"
                ) from None
        return urllib.parse.unquote_to_bytes(payload)

    async def _local(self, url: str, param: str | None) -> bytes:
        roots = self.settings.allowed_local_media_paths
        if not roots:
            raise url_error(
                "local audio paths are disabled (see --allowed-local-media-path)", param=param
            )
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise url_error("file: URLs must name a local path", param=param)
        # resolve() follows symlinks, so a link inside a root cannot point outside it.
        path = Path(urllib.parse.unquote(parts.path)).resolve()
        if not any(path.is_relative_to(Path(root).resolve()) for root in roots):
            raise url_error("audio path is outside the allowed local media paths", param=param)
        if not path.is_file():
            raise APIError(400, "audio file not found", param=param, code="audio_not_found")
        if path.stat().st_size > self.bytes_left:
            raise too_large(self.settings.max_upload_bytes, param)
        return await asyncio.to_thread(path.read_bytes)


def audio_too_long(seconds: float, max_s: float, param: str | None) -> APIError:
    return APIError(
        400,
        f"audio is {seconds:.1f} s long; the limit is {max_s:g} s",
        param=param,
        code="audio_too_long",
    )


class MediaLoader:
    def __init__(self, settings: ServerSettings, fetcher: RemoteFetcher | None = None):
        self.settings = settings
        if fetcher is None and settings.allow_remote_audio:
            fetcher = RemoteFetcher(
                domains=settings.remote_audio_domains,
                timeout_s=settings.remote_timeout_s,
                max_redirects=settings.max_redirects,
            )
        self.fetcher = fetcher

    def for_request(self) -> RequestMedia:
        return RequestMedia(self.settings, self.fetcher)
