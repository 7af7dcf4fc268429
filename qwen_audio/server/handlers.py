"""Request handling: OpenAI requests in, engine calls, OpenAI responses out.

The server never renders prompts: chat messages go to `engine.stream_chat` in the chat format of
`prompt.py`, raw prompts to `engine.stream_generate`. Audio reaches the engine decoded, as
`(samples, 16000)` pairs, after the server's limits were checked.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from . import limits
from . import transcription as tr
from .engine_calls import Admission, Generation, Slot, unless_disconnected
from .media import SAMPLE_RATE, MediaLoader, RequestMedia, too_large
from .metrics import Metrics
from .protocol import (
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    InputAudioPart,
    ModelCard,
    ModelList,
    TextPart,
    Usage,
    now,
    random_id,
    sse,
)
from .settings import ServerSettings

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def usage_of(out: Any) -> Usage:
    if out is None:
        return Usage()
    cached = getattr(out, "cached_tokens", 0)
    return Usage.of(out.prompt_tokens, out.audio_tokens, out.completion_tokens, cached)


class Handlers:
    def __init__(self, engine: Any, settings: ServerSettings, metrics: Metrics | None = None):
        self.engine = engine
        self.settings = settings
        self.model_name = str(engine.model_name)
        self.metrics = metrics or Metrics(self.model_name)
        self.media = MediaLoader(settings)
        # CPU-heavy preparation (decoding, resampling) goes to the engine's bounded pool, where
        # it runs off the event loop and a few requests at a time.
        self.prepare = engine.run_prepare
        self.admission = Admission(engine, settings, self.metrics)
        self.started = now()

    # -- helpers ---------------------------------------------------------------------------

    def sampling_params(self, max_tokens: int, **fields: Any) -> Any:
        """SamplingParams from the request's fields; unset fields keep the engine's defaults."""
        # Imported here: the server package itself stays importable without torch.
        from qwen_audio import SamplingParams

        kw = {k: v for k, v in fields.items() if v is not None and v != []}
        kw["max_tokens"] = max_tokens
        if kw.get("min_tokens", 0) > max_tokens:
            raise APIError(400, "min_tokens is larger than max_tokens", param="min_tokens")
        try:
            return SamplingParams(**kw)
        except (TypeError, ValueError) as e:
            raise APIError(400, f"invalid sampling parameters: {e}", code="invalid_value") from None

    def generation(self, stream: AsyncIterator, request_id: str, slot: Slot) -> Generation:
        return Generation(self.engine, stream, request_id, slot.deadline)

    def record(self, endpoint: str, slot: Slot, out: Any) -> None:
        if out is not None:
            self.metrics.usage(out.prompt_tokens, out.audio_tokens, out.completion_tokens)
        self.metrics.finished(endpoint, time.monotonic() - slot.t0)

    async def first_output(self, endpoint: str, request: Request, gen: Generation, slot: Slot):
        """Wait for the first output before any response header is sent, so that errors the
        engine finds in the input (context length, bad audio) still get their 4xx status."""
        out = await unless_disconnected(request, gen.next)
        self.metrics.first_token(endpoint, time.monotonic() - slot.t0)
        return out

    async def run(self, endpoint: str, request: Request, slot: Slot, gen: Generation):
        """Collect a whole answer: (text, token_ids, last output)."""

        async def collect():
            text, ids, last = [], [], None
            while (out := await gen.next()) is not None:
                if last is None:
                    self.metrics.first_token(endpoint, time.monotonic() - slot.t0)
                text.append(out.text)
                ids.extend(out.token_ids)
                last = out
            return "".join(text), ids, last

        try:
            return await unless_disconnected(request, collect)
        finally:
            await gen.close()

    # -- chat completions ------------------------------------------------------------------

    async def chat_messages(self, req: ChatCompletionRequest, media: RequestMedia) -> list[dict]:
        audio_parts = sum(
            1
            for m in req.messages
            if isinstance(m.content, list)
            for p in m.content
            if not isinstance(p, TextPart)
        )
        media.check_count(audio_parts, "messages")
        messages = []
        for i, m in enumerate(req.messages):
            role = "system" if m.role == "developer" else m.role
            if m.content is None or isinstance(m.content, str):
                messages.append({"role": role, "content": m.content or ""})
                continue
            parts: list[dict] = []
            for j, p in enumerate(m.content):
                param = f"messages[{i}].content[{j}]"
                if isinstance(p, TextPart):
                    parts.append({"type": "text", "text": p.text})
                elif isinstance(p, InputAudioPart):
                    samples = await media.from_base64(p.input_audio.data, param)
                    parts.append({"type": "audio", "audio": (samples, SAMPLE_RATE)})
                else:
                    samples = await media.from_url(p.audio_url.url, param)
                    parts.append({"type": "audio", "audio": (samples, SAMPLE_RATE)})
            messages.append({"role": role, "content": parts})
        return messages

    @property
    def max_text_chars(self) -> int:
        return limits.max_text_chars(self.settings.max_text_chars, self.engine.max_model_len)

    async def chat(self, req: ChatCompletionRequest, request: Request) -> Response:
        endpoint = "chat"
        limits.check_chat(
            req, max_chars=self.max_text_chars, max_messages=self.settings.max_messages
        )
        slot = self.admission.admit()
        try:
            media = self.media.for_request(self.prepare, self.engine.max_model_len)
            messages = await unless_disconnected(request, lambda: self.chat_messages(req, media))
            limit = min(self.settings.default_max_tokens, self.engine.max_model_len)
            max_tokens = req.max_completion_tokens or req.max_tokens or limit
            params = self.sampling_params(max_tokens, **req.sampling_fields())
            rid = random_id("chatcmpl")
            gen = self.generation(
                self.engine.stream_chat(messages, params, request_id=rid), rid, slot
            )
            if req.stream:
                try:
                    first = await self.first_output(endpoint, request, gen, slot)
                except BaseException:
                    await gen.close()
                    raise
                events = self.chat_events(req, rid, gen, first, slot)
                slot = None  # released by the stream
                return StreamingResponse(
                    events, media_type="text/event-stream", headers=SSE_HEADERS
                )
            text, _, last = await self.run(endpoint, request, slot, gen)
            self.record(endpoint, slot, last)
            return JSONResponse(
                ChatCompletion(
                    id=rid,
                    model=self.model_name,
                    choices=[
                        ChatChoice(
                            message=AssistantMessage(content=text),
                            finish_reason=last.finish_reason if last else "stop",
                        )
                    ],
                    usage=usage_of(last),
                ).model_dump()
            )
        finally:
            if slot is not None:
                slot.release()

    async def chat_events(self, req, rid: str, gen: Generation, first: Any, slot: Slot):
        created = now()

        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None):
            choices = [] if usage else [ChunkChoice(delta=delta, finish_reason=finish)]
            return sse(
                ChatCompletionChunk(
                    id=rid, created=created, model=self.model_name, choices=choices, usage=usage
                )
            )

        last = None
        try:
            yield chunk(Delta(role="assistant", content=""))
            out = first
            while out is not None:
                last = out
                if out.text:
                    yield chunk(Delta(content=out.text))
                if out.finish_reason is not None:
                    yield chunk(Delta(), finish=out.finish_reason)
                out = await gen.next()
            if req.include_usage:
                yield chunk(Delta(), usage=usage_of(last))
            yield "data: [DONE]\n\n"
        except APIError as e:  # headers are gone: report in the stream, as OpenAI does
            self.metrics.error("chat", e.code or e.type)
            yield sse(e.body())
        finally:
            await gen.close()
            self.record("chat", slot, last)
            slot.release()

    # -- text completions (base-model raw prompts) -----------------------------------------

    async def completion_audios(self, req: CompletionRequest, media: RequestMedia) -> list:
        media.check_count(len(req.audios), "audios")
        audios = []
        for i, a in enumerate(req.audios):
            param = f"audios[{i}]"
            if a.data is not None:
                audios.append((await media.from_base64(a.data, param), SAMPLE_RATE))
            elif a.url is not None:
                audios.append((await media.from_url(a.url, param), SAMPLE_RATE))
            else:
                raise APIError(400, "an audio needs `data` or `url`", param=param)
        return audios

    async def completion(self, req: CompletionRequest, request: Request) -> Response:
        endpoint = "completions"
        limits.check_texts([("prompt", req.prompt)], self.max_text_chars, "--max-text-chars")
        slot = self.admission.admit()
        try:
            media = self.media.for_request(self.prepare, self.engine.max_model_len)
            audios = await unless_disconnected(request, lambda: self.completion_audios(req, media))
            max_tokens = req.max_tokens or self.settings.default_completion_max_tokens
            params = self.sampling_params(max_tokens, **req.sampling_fields())
            rid = random_id("cmpl")
            stream = self.engine.stream_generate(req.prompt, audios, params, request_id=rid)
            gen = self.generation(stream, rid, slot)
            if req.stream:
                try:
                    first = await self.first_output(endpoint, request, gen, slot)
                except BaseException:
                    await gen.close()
                    raise
                events = self.completion_events(req, rid, gen, first, slot)
                slot = None
                return StreamingResponse(
                    events, media_type="text/event-stream", headers=SSE_HEADERS
                )
            text, _, last = await self.run(endpoint, request, slot, gen)
            self.record(endpoint, slot, last)
            choice = CompletionChoice(
                text=text, finish_reason=last.finish_reason if last else "stop"
            )
            body = Completion(
                id=rid, created=now(), model=self.model_name, choices=[choice], usage=usage_of(last)
            )
            return JSONResponse(body.model_dump())
        finally:
            if slot is not None:
                slot.release()

    async def completion_events(self, req, rid: str, gen: Generation, first: Any, slot: Slot):
        created = now()
        last = None
        try:
            out = first
            while out is not None:
                last = out
                if out.text or out.finish_reason is not None:
                    choice = CompletionChoice(text=out.text, finish_reason=out.finish_reason)
                    yield sse(
                        Completion(id=rid, created=created, model=self.model_name, choices=[choice])
                    )
                out = await gen.next()
            if req.include_usage:
                yield sse(
                    Completion(
                        id=rid,
                        created=created,
                        model=self.model_name,
                        choices=[],
                        usage=usage_of(last),
                    )
                )
            yield "data: [DONE]\n\n"
        except APIError as e:
            self.metrics.error("completions", e.code or e.type)
            yield sse(e.body())
        finally:
            await gen.close()
            self.record("completions", slot, last)
            slot.release()

    # -- transcriptions and translations ---------------------------------------------------

    async def transcribe(
        self, request: Request, file: UploadFile, form: tr.AudioForm, translate: bool
    ) -> Response:
        endpoint = "translations" if translate else "transcriptions"
        form.check()
        if len((await request.form()).getlist("file")) > 1:  # FastAPI would keep only the last
            raise APIError(400, "one audio file per request: `file` was sent twice", param="file")
        if form.prompt:
            limits.check_texts([("prompt", form.prompt)], self.max_text_chars, "--max-text-chars")
        slot = self.admission.admit()
        try:
            if file.size is not None and file.size > self.settings.max_upload_bytes:
                raise too_large(self.settings.max_upload_bytes, "file")
            data = await file.read()
            media = self.media.for_request(self.prepare)  # windows: no one prompt to fit
            samples = await unless_disconnected(request, lambda: media.from_bytes(data, "file"))
            job = tr.Job(
                engine=self.engine,
                settings=self.settings,
                samples=samples,
                form=form,
                translate=translate,
                params=lambda: self.sampling_params(
                    self.settings.transcription_max_tokens, temperature=form.temperature
                ),
            )
            if form.stream:
                stream = job.events(slot)
                try:  # the first event, for the same reason as first_output
                    first = await unless_disconnected(request, stream.__anext__)
                except BaseException:
                    await stream.aclose()
                    raise
                self.metrics.first_token(endpoint, time.monotonic() - slot.t0)
                events = self.transcript_events(endpoint, job, first, stream, slot)
                slot = None
                return StreamingResponse(
                    events, media_type="text/event-stream", headers=SSE_HEADERS
                )
            result = await unless_disconnected(request, lambda: job.run(slot))
            self.record_transcription(endpoint, job, slot)
            body, media_type = tr.render(result, form.response_format)
            if media_type == "application/json":
                return JSONResponse(body)
            return PlainTextResponse(body, media_type=media_type)
        finally:
            if slot is not None:
                slot.release()

    def record_transcription(self, endpoint: str, job: tr.Job, slot: Slot) -> None:
        r = job.result
        self.metrics.usage(r.prompt_tokens, r.audio_tokens, r.completion_tokens)
        self.metrics.finished(endpoint, time.monotonic() - slot.t0)

    async def transcript_events(self, endpoint: str, job: tr.Job, first: str, stream, slot: Slot):
        try:
            yield first
            async for event in stream:
                yield event
        except APIError as e:
            self.metrics.error(endpoint, e.code or e.type)
            yield sse(e.body())
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self.record_transcription(endpoint, job, slot)
            slot.release()

    # -- models, health, metrics -----------------------------------------------------------

    def models(self) -> dict:
        card = ModelCard(
            id=self.model_name, created=self.started, max_model_len=self.engine.max_model_len
        )
        return ModelList(data=[card]).model_dump()

    def engine_stats(self) -> dict:
        try:
            return dict(self.engine.stats())
        except Exception:
            return {}

    def health(self) -> Response:
        stats = self.engine_stats()
        body = {"status": "ok" if stats else "degraded", "model": self.model_name, **stats}
        body["in_flight"] = self.admission.in_flight
        return JSONResponse(body, status_code=200 if stats else 503)

    def metrics_text(self) -> Response:
        text = self.metrics.render(self.engine_stats())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
