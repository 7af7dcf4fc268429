"""Audio inputs of API requests: base64 and data: URLs, allow-listed local files, remote URLs.

Every source ends as bytes that go through the package's one audio loader
(`qwen_audio.audio_io.load_audio`), giving 16 kHz mono float32 samples for the engine. Limits:
audio bytes per request (`--max-upload-mb`), audios per request, and per audio its seconds,
decoded samples and sample rate (`AudioLimits`: read from the container's header before
decoding, counted again while decoding); in a chat or completion, the seconds of all its audios
together are bounded by the model's context too. Decoding runs through `prepare`, the engine's
bounded pool for CPU-heavy work, never on the event loop. Local paths
(`file://`) only under `--allowed-local-media-path`; http(s) only with `--allow-remote-audio`,
through the SSRF-safe fetcher of `remote.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from qwen_audio.audio_io import AudioLimitError, AudioLimits, load_audio

from .limits import is_valid_unicode
from .protocol import APIError
from .remote import RemoteFetcher, too_large, url_error
from .settings import ServerSettings

SAMPLE_RATE = 16000  # what load_audio returns and the engine takes
AUDIO_TOKENS_PER_SECOND = 25  # 750 audio tokens per 30 s window (audio.py)
Prepare = Callable[..., Awaitable[Any]]  # runs CPU-heavy work off the event loop, a few at once


def decode_audio(data: bytes, limits: AudioLimits) -> np.ndarray:
    """Bytes in any supported container -> 16 kHz mono float32 samples, within `limits`."""
    return load_audio(data, limits=limits)


class RequestMedia:
    """The audios of one request, checked against the per-request limits as they arrive."""

    def __init__(
        self,
        settings: ServerSettings,
        fetcher: RemoteFetcher | None,
        prepare: Prepare,
        context_tokens: int | None,
    ):
        self.settings = settings
        self.fetcher = fetcher
        self.prepare = prepare
        self.count = 0
        self.bytes_left = settings.max_upload_bytes
        self.limits = AudioLimits(
            max_seconds=settings.max_audio_seconds,
            max_samples=settings.max_audio_samples,
            min_rate=settings.min_sample_rate,
            max_rate=settings.max_sample_rate,
        )
        # Audio that goes into one prompt must fit the model's context: at 25 tokens a second,
        # longer audio could only end in a context-length error, after all the decoding.
        self.context_tokens = context_tokens
        self.context_seconds_left = (
            None if context_tokens is None else context_tokens / AUDIO_TOKENS_PER_SECOND
        )

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
        limits = self.limits
        by_context = (
            self.context_seconds_left is not None
            and self.context_seconds_left < self.settings.max_audio_seconds
        )
        if by_context:
            limits = dataclasses.replace(limits, max_seconds=self.context_seconds_left)
        try:
            samples = await self.prepare(decode_audio, data, limits)
        except AudioLimitError as e:
            raise self._over_limit(e, by_context, param) from None
        except Exception as e:  # a corrupt file must give a 400, whatever the decoder raises
            message = str(e) or type(e).__name__
            raise APIError(
                400, f"cannot decode audio: {message}", param=param, code="invalid_audio"
            ) from None
        if self.context_seconds_left is not None:
            self.context_seconds_left -= samples.size / SAMPLE_RATE
        return samples

    def _over_limit(self, e: AudioLimitError, by_context: bool, param: str | None) -> APIError:
        """The loader's message, with the server option (or the context) that set the limit."""
        message = str(e).removeprefix("audio bytes: ")
        if e.limit == "max_seconds" and by_context:
            return APIError(
                400,
                f"{message} (the model's context of {self.context_tokens:,} tokens holds at most "
                f"{self.context_tokens / AUDIO_TOKENS_PER_SECOND:g} s of audio per request, at "
                f"{AUDIO_TOKENS_PER_SECOND} tokens a second)",
                param=param,
                code="audio_too_long",
            )
        option, code = LIMIT_OPTIONS[e.limit]
        return APIError(400, f"{message} ({option})" if option else message, param=param, code=code)

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
        name = urllib.parse.unquote(parts.path)
        if "\x00" in name or not is_valid_unicode(name):
            raise url_error("file: URL holds a null byte or invalid Unicode", param=param)
        try:
            # resolve() follows symlinks, so a link inside a root cannot point outside it.
            path = Path(name).resolve()
            if not any(path.is_relative_to(Path(root).resolve()) for root in roots):
                raise url_error("audio path is outside the allowed local media paths", param=param)
            if not path.is_file():
                raise APIError(400, "audio file not found", param=param, code="audio_not_found")
            if path.stat().st_size > self.bytes_left:
                raise too_large(self.settings.max_upload_bytes, param)
            return await asyncio.to_thread(path.read_bytes)
        except OSError as e:  # a name too long, a file that vanished or cannot be read
            raise APIError(
                400,
                f"cannot read the audio file: {e.strerror or e}",
                param=param,
                code="audio_not_found",
            ) from None


LIMIT_OPTIONS = {  # AudioLimitError.limit -> (the server option that sets it, error code)
    "max_seconds": ("--max-audio-seconds", "audio_too_long"),
    "max_samples": ("--max-audio-samples", "too_many_samples"),
    "sample_rate": ("--min-sample-rate, --max-sample-rate", "unsupported_sample_rate"),
    "max_channels": ("", "too_many_channels"),
}


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

    def for_request(self, prepare: Prepare, context_tokens: int | None = None) -> RequestMedia:
        """`context_tokens`: the audio goes into one prompt of at most this many tokens."""
        return RequestMedia(self.settings, self.fetcher, prepare, context_tokens)
