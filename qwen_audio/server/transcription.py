"""/v1/audio/transcriptions and /v1/audio/translations: windows, prompts, output formats.

A file is cut into consecutive 30 s windows (the encoder's span); each window is one engine
request and one segment, so segment times are window times. The prompt depends on the model:
- Instruct ("chat" style): a user turn holding the window's audio and a text part,
  "Transcribe the speech." (or "Translate the speech into English."), plus the language when
  given and the request's `prompt` as context.
- Base ("base" style): the raw ASR prompt of the original evaluation,
  `<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>`
  (the language tag only when `language` is given; the base model writes its own otherwise), or
  "... translate the speech into English: <|xx|>". The request's `prompt` is not used here.
`--asr-style auto` picks "chat" when the model's name contains "instruct".
Language tags the model writes (`<|en|>`) are removed from the text and reported as the language.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine_calls import Generation, Slot
from .media import SAMPLE_RATE
from .protocol import (
    TRANSCRIPTION_FORMATS,
    APIError,
    DurationUsage,
    InputTokenDetails,
    Segment,
    TranscriptDelta,
    TranscriptDone,
    Transcription,
    TranscriptionUsage,
    TranscriptionVerbose,
    random_id,
    sse,
)
from .settings import ServerSettings

WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480000 samples in a 30-second window
MIN_TAIL_SAMPLES = SAMPLE_RATE  # a last piece under 1 s joins the window before it
AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"

LANGUAGES = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French",
    "hi": "Hindi", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ru": "Russian", "sv": "Swedish",
    "th": "Thai", "tr": "Turkish", "vi": "Vietnamese", "yue": "Cantonese", "zh": "Chinese",
}  # fmt: skip
LANGUAGE_RE = re.compile(r"^([a-zA-Z]{2,3})([-_][a-zA-Z0-9]{2,8})?$")
TAG_RE = re.compile(r"<\|([a-z]{2,3})\|>")
TAG_PREFIX_RE = re.compile(r"<(\|([a-z]{0,3}(\|)?)?)?")


@dataclass
class AudioForm:
    """The multipart fields of a transcription or translation request."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    stream: bool = False

    def check(self) -> None:
        if self.response_format not in TRANSCRIPTION_FORMATS:
            raise APIError(
                400,
                f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
                param="response_format",
                code="invalid_value",
            )
        if not 0.0 <= self.temperature <= 1.0:
            raise APIError(400, "temperature must be in [0, 1]", param="temperature")
        if self.stream and self.response_format not in ("json", "text"):
            raise APIError(400, "stream=true needs response_format json or text", param="stream")
        if self.language:
            m = LANGUAGE_RE.match(self.language.strip())
            if not m:
                raise APIError(400, "language must be an ISO-639 code", param="language")
            self.language = m.group(1).lower()
        if self.prompt and len(self.prompt) > 4000:
            raise APIError(400, "prompt is longer than 4000 characters", param="prompt")


def windows(num_samples: int) -> list[tuple[int, int]]:
    bounds = list(range(0, num_samples, WINDOW_SAMPLES)) + [num_samples]
    spans = list(zip(bounds[:-1], bounds[1:]))
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < MIN_TAIL_SAMPLES:
        spans[-2:] = [(spans[-2][0], spans[-1][1])]
    return spans


class TextCleaner:
    """Streams one window's text: drops leading language tags (remembering the language) and
    leading whitespace, and holds back trailing whitespace, so the deltas add up exactly to the
    segment's stripped text."""

    def __init__(self):
        self.head = ""  # text seen while it may still be a tag
        self.in_head = True
        self.held = ""  # trailing whitespace not sent yet
        self.sent = False
        self.language: str | None = None

    def feed(self, delta: str) -> str:
        if self.in_head:
            self.head += delta
            while True:
                s = self.head.lstrip()
                m = TAG_RE.match(s)
                if m:
                    self.language = self.language or m.group(1)
                    self.head = s[m.end() :]
                    continue
                if s == "" or TAG_PREFIX_RE.fullmatch(s):
                    return ""  # could still become a tag
                break
            self.in_head = False
            delta, self.head = s, ""
        return self._emit(delta)

    def flush(self) -> str:
        rest, self.head, self.in_head = self.head.lstrip(), "", False
        return self._emit(rest)

    def _emit(self, delta: str) -> str:
        text = self.held + delta
        body = text.rstrip()
        self.held = text[len(body) :]
        if not self.sent:
            body = body.lstrip()
        if body:
            self.sent = True
        return body


@dataclass
class Result:
    task: str
    language: str
    duration: float
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    prompt_tokens: int = 0
    audio_tokens: int = 0
    completion_tokens: int = 0

    @property
    def usage(self) -> TranscriptionUsage:
        return TranscriptionUsage(
            input_tokens=self.prompt_tokens,
            output_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            input_token_details=InputTokenDetails(
                audio_tokens=self.audio_tokens, text_tokens=self.prompt_tokens - self.audio_tokens
            ),
        )


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class Job:
    engine: Any
    settings: ServerSettings
    samples: np.ndarray
    form: AudioForm
    translate: bool
    params: Callable[[], Any]  # builds the SamplingParams

    def __post_init__(self):
        self.result = Result(
            task="translate" if self.translate else "transcribe",
            language=self.form.language or "unknown",
            duration=round(len(self.samples) / SAMPLE_RATE, 3),
        )

    @property
    def style(self) -> str:
        style = self.settings.asr_style
        if style == "auto":
            return "chat" if "instruct" in str(self.engine.model_name).lower() else "base"
        return style

    def engine_call(self, audio: np.ndarray, request_id: str) -> AsyncIterator:
        lang = self.form.language
        if self.style == "chat":
            if self.translate:
                text = "Translate the speech into English."
            else:
                text = "Transcribe the speech."
                if lang:
                    text += f" The speech is in {LANGUAGES.get(lang, lang)}."
            if self.form.prompt:
                text += f"\nContext: {self.form.prompt}"
            content = [
                {"type": "audio", "audio": (audio, SAMPLE_RATE)},
                {"type": "text", "text": text},
            ]
            messages = [{"role": "user", "content": content}]
            return self.engine.stream_chat(messages, self.params(), request_id=request_id)
        task = "translate the speech into English" if self.translate else "recognize the speech"
        prompt = f"{AUDIO_PLACEHOLDER}Detect the language and {task}:"
        if lang:
            prompt += f" <|{lang}|>"
        audios = [(audio, SAMPLE_RATE)]
        return self.engine.stream_generate(prompt, audios, self.params(), request_id=request_id)

    async def deltas(self, slot: Slot) -> AsyncIterator[str]:
        """Text deltas of the whole file, window after window; fills `self.result`."""
        r = self.result
        for start, end in windows(len(self.samples)):
            rid = random_id("trsc")
            stream = self.engine_call(self.samples[start:end], rid)
            gen = Generation(self.engine, stream, rid, slot.deadline)
            cleaner, parts, ids, last = TextCleaner(), [], [], None
            try:
                while (out := await gen.next()) is not None:
                    last = out
                    ids.extend(out.token_ids)
                    if piece := cleaner.feed(out.text):
                        if not parts and r.text:
                            piece = " " + piece  # between windows
                        parts.append(piece)
                        yield piece
            finally:
                await gen.close()
            if piece := cleaner.flush():
                if not parts and r.text:
                    piece = " " + piece
                parts.append(piece)
                yield piece
            text = "".join(parts)
            r.text += text
            if last is not None:
                r.prompt_tokens += last.prompt_tokens
                r.audio_tokens += last.audio_tokens
                r.completion_tokens += last.completion_tokens
            if r.language == "unknown" and cleaner.language:
                r.language = cleaner.language
            if text.strip():
                r.segments.append(
                    Segment(
                        id=len(r.segments),
                        seek=start // 160,  # 10 ms frames
                        start=round(start / SAMPLE_RATE, 3),
                        end=round(end / SAMPLE_RATE, 3),
                        text=text.strip(),
                        tokens=ids,
                        temperature=self.form.temperature,
                        compression_ratio=round(compression_ratio(text.strip()), 4),
                    )
                )

    async def run(self, slot: Slot) -> Result:
        async with aclosing(self.deltas(slot)) as deltas:
            async for _ in deltas:
                pass
        return self.result

    async def events(self, slot: Slot) -> AsyncIterator[str]:
        # aclosing: an early close must reach the window's engine request at once
        async with aclosing(self.deltas(slot)) as deltas:
            async for piece in deltas:
                yield sse(TranscriptDelta(delta=piece))
        yield sse(TranscriptDone(text=self.result.text, usage=self.result.usage))


def timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(result: Result, response_format: str) -> tuple[Any, str]:
    """(body, media type) for a finished transcription."""
    if response_format == "json":
        return Transcription(text=result.text, usage=result.usage).model_dump(), "application/json"
    if response_format == "verbose_json":
        body = TranscriptionVerbose(
            task=result.task,
            language=LANGUAGES.get(result.language, result.language).lower(),
            duration=result.duration,
            text=result.text,
            segments=result.segments,
            usage=DurationUsage(seconds=result.duration),
        )
        return body.model_dump(), "application/json"
    if response_format == "text":
        return result.text + "\n", "text/plain"
    lines = ["WEBVTT", ""] if response_format == "vtt" else []
    for i, seg in enumerate(result.segments, start=1):
        if response_format == "srt":
            lines.append(str(i))
            lines.append(f"{timestamp(seg.start, ',')} --> {timestamp(seg.end, ',')}")
        else:
            lines.append(f"{timestamp(seg.start, '.')} --> {timestamp(seg.end, '.')}")
        lines += [seg.text, ""]
    media_type = "text/vtt" if response_format == "vtt" else "application/x-subrip"
    return "\n".join(lines), media_type
