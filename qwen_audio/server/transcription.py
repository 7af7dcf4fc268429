"""/v1/audio/transcriptions and /v1/audio/translations over the shared ASR path (`qwen_audio.asr`).

A file is cut into segments (at pauses by default; `segmentation=fixed` or `--asr-segmentation
fixed` keeps 30 s windows), every segment is one engine request, and all requests of a file are
prepared first and then submitted at once, so continuous batching runs them together; streamed text still arrives in
order (a later segment's text waits until the ones before it are done). Prompts, the chat/base
rule (`--asr-style auto`: read from the checkpoint), tag clean-up and SRT/VTT are
`qwen_audio.asr`'s, the same as `qwen-audio transcribe`, so both give the same text.
Language tags the model writes (`<|en|>`) are removed from the text and reported as the language.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from qwen_audio import asr

from .engine_calls import Generation, Slot, engine_error
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

LANGUAGES = asr.LANGUAGES
LANGUAGE_RE = re.compile(r"^([a-zA-Z]{2,3})([-_][a-zA-Z0-9]{2,8})?$")
TextCleaner = asr.TextCleaner
timestamp = asr.timestamp


@dataclass
class AudioForm:
    """The multipart fields of a transcription or translation request."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    stream: bool = False
    segmentation: str | None = None  # vad | fixed; None: the server's --asr-segmentation

    def check(self) -> None:
        if self.segmentation is not None and self.segmentation not in asr.SEGMENTATIONS:
            raise APIError(
                400, "segmentation must be vad or fixed", param="segmentation", code="invalid_value"
            )
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


@dataclass
class Seg:
    start: float
    end: float
    text: str
    tokens: list[int]


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
        self.style = asr.detect_style(
            getattr(self.engine, "checkpoint", None), self.settings.asr_style
        )
        self.segmentation = self.form.segmentation or self.settings.asr_segmentation

    async def prepare(self, audio: np.ndarray) -> Any:
        """One segment's engine request, prepared (decoded, featurized, tokenized on the
        engine's preparation pool) but not started."""
        task = "translate" if self.translate else "transcribe"
        lang = self.form.language
        if self.style == "chat":
            text = asr.chat_instruction(task, lang, self.form.prompt)
            content = [
                {"type": "audio", "audio": (audio, SAMPLE_RATE)},
                {"type": "text", "text": text},
            ]
            return await self.engine.prepare_chat([{"role": "user", "content": content}])
        return await self.engine.prepare_raw(asr.base_prompt(task, lang), [(audio, SAMPLE_RATE)])

    async def engine_call(self, audio: np.ndarray, request_id: str) -> AsyncIterator:
        """One segment prepared and started at once: the realtime path, an utterance at a time."""
        prompt = await self.prepare(audio)
        async for out in self.engine.stream_prompt(prompt, self.params(), request_id=request_id):
            yield out

    async def spans(self) -> list[asr.Span]:
        # on the engine's preparation pool: CPU work (Silero VAD runs torch) that must not
        # start threads of its own (see `qwen_audio.openmp`)
        return await self.engine.run_prepare(
            asr.split_audio,
            self.samples,
            self.segmentation,
            self.settings.asr_max_segment_seconds,
        )

    async def deltas(self, slot: Slot) -> AsyncIterator[str]:
        """Text deltas of the whole file, segment after segment; fills `self.result`. All
        segments are submitted to the engine at once; their outputs wait in queues."""
        r = self.result
        spans = await self.spans()
        # Every segment is prepared before any is submitted, so they enter the engine together
        # and its first step batches them all; submitted as each is prepared, they would trickle
        # in while the engine already steps the first few.
        try:
            with anyio.fail_after(max(slot.deadline - time.monotonic(), 0.0)):
                prompts = await asyncio.gather(
                    *(self.prepare(self.samples[span.start : span.end]) for span in spans)
                )
        except TimeoutError:
            raise APIError(504, "request timed out", type="timeout", code="timeout") from None
        except ValueError as e:
            raise engine_error(e) from None
        gens: list[Generation] = []
        for prompt in prompts:
            rid = random_id("trsc")
            stream = self.engine.stream_prompt(prompt, self.params(), request_id=rid)
            gens.append(Generation(self.engine, stream, rid, slot.deadline))
        queues: list[asyncio.Queue] = [asyncio.Queue() for _ in spans]

        async def pump(gen: Generation, queue: asyncio.Queue) -> None:
            try:
                await gen.drain(queue.put_nowait)
            except Exception as e:  # handed to the reader, which raises it in order
                queue.put_nowait(e)
                return
            queue.put_nowait(None)

        # a stream's request enters the engine when its pump first reads it: longest first, as
        # the command does (asr.longest_first); the text is still read in file order
        tasks = [asyncio.create_task(pump(gens[i], queues[i])) for i in asr.longest_first(spans)]
        try:
            for span, queue in zip(spans, queues):
                cleaner, parts, ids, last = TextCleaner(), [], [], None
                while (out := await queue.get()) is not None:
                    if isinstance(out, Exception):
                        raise out
                    last = out
                    ids.extend(out.token_ids)
                    if piece := cleaner.feed(out.text):
                        if not parts and r.text:
                            piece = " " + piece  # between segments
                        parts.append(piece)
                        yield piece
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
                    seg = Seg(span.start_s, span.end_s, text.strip(), ids)
                    (record,) = asr.segment_records([seg], self.form.temperature)
                    record["id"] = len(r.segments)
                    r.segments.append(Segment(**record))
        finally:
            for t in tasks:
                t.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*tasks, return_exceptions=True)
                for g in gens:
                    await g.close()

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
    if response_format == "vtt":
        return asr.vtt(result.segments), "text/vtt"
    return asr.srt(result.segments), "application/x-subrip"
