"""/v1/realtime: OpenAI's Realtime API for transcription sessions, over a websocket.

A session takes `input_audio_buffer.append` (base64 PCM16 at 24 kHz), `.commit` and `.clear`, and
a transcription configuration by `session.update` (the GA shape, `session.type: "transcription"`)
or `transcription_session.update` (the beta shape, also accepted flat in `session.update`); it
answers in the dialect the client connected with (`OpenAI-Beta: realtime=v1`: beta). With
`server_vad` turn detection (the default) the server finds the utterances itself
(`qwen_audio.asr.streaming`) and sends `input_audio_buffer.speech_started` / `speech_stopped`;
every committed utterance is one engine request with the prompts of /v1/audio/transcriptions
(`transcription.Job.engine_call`), so a buffer and the same audio uploaded as a file give the
same text, streamed as `conversation.item.input_audio_transcription.delta` and `.completed`.

Bad input gets an `error` event naming the problem and the session goes on; limits
(`ServerSettings.realtime_*`): sessions at once, bytes per event, the length of an utterance (cut
and transcribed, never dropped), transcriptions in flight per session, and an idle timeout. A
client that leaves has its transcriptions aborted in the engine at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from qwen_audio.asr import TextCleaner
from qwen_audio.asr.streaming import INPUT_RATE, LiveBuffer, SpeechStarted, SpeechStopped, Utterance

from . import transcription as tr
from .engine_calls import Generation
from .protocol import APIError, random_id
from .realtime_protocol import (
    CONVERSATION_EVENTS,
    RealtimeError,
    SessionConfig,
    container_format,
    error_event,
    event_id,
    item_object,
    parse_update,
    usage_object,
)

log = logging.getLogger("qwen_audio.server")
ENDPOINT = "realtime"
OUTBOX = 256  # events waiting to be written; a client that stops reading stops being read


class Realtime:
    """The sessions of one server: their count is bounded."""

    def __init__(self, handlers: Any, settings: Any):
        self.handlers = handlers
        self.settings = settings
        self.open = 0

    async def serve(self, ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        # Browsers cannot send headers: the page offers "realtime" and its key as a subprotocol,
        # as OpenAI's own JavaScript client does; the one chosen must be among those offered.
        await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
        if self.open >= self.settings.realtime_max_sessions:
            self.handlers.metrics.error(ENDPOINT, "session_limit_reached")
            message = (
                f"the server holds {self.open} realtime sessions, its limit "
                "(--realtime-max-sessions); retry later"
            )
            await ws.send_text(json.dumps(error_event(message, "session_limit_reached")))
            await ws.close(code=1013)  # try again later
            return
        beta = "realtime=v1" in ws.headers.get("openai-beta", "")
        session = Session(ws, self, "beta" if beta else "ga")
        self.open += 1
        try:
            await session.run()
        finally:
            self.open -= 1


class Session:
    def __init__(self, ws: WebSocket, realtime: Realtime, dialect: str):
        self.ws = ws
        self.handlers = realtime.handlers
        self.settings = realtime.settings
        self.dialect = dialect
        self.id = "sess_" + uuid.uuid4().hex[:24]
        self.config = SessionConfig()
        self.buffer = LiveBuffer(self.config.turn, self.settings.realtime_max_utterance_seconds)
        self.job = self._job()
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue(OUTBOX)
        self.transcriptions: set[asyncio.Task] = set()
        self.item: str | None = None  # the item of the utterance in progress
        self.previous: str | None = None  # the last committed item

    def _job(self) -> tr.Job:
        form = tr.AudioForm(language=self.config.language, prompt=self.config.prompt)
        settings, handlers = self.settings, self.handlers
        return tr.Job(
            engine=handlers.engine,
            settings=settings,
            samples=np.zeros(0, np.float32),
            form=form,
            translate=False,
            params=lambda: handlers.sampling_params(
                settings.transcription_max_tokens, temperature=form.temperature
            ),
        )

    # -- sending --------------------------------------------------------------------------

    async def send(self, event: dict) -> None:
        await self.outbox.put(json.dumps({"event_id": event_id(), **event}))

    async def error(self, message: str, code: str, param: str | None = None, client_event=None):
        self.handlers.metrics.error(ENDPOINT, code)
        await self.outbox.put(json.dumps(error_event(message, code, param, client_event)))

    async def writer(self) -> None:
        while (text := await self.outbox.get()) is not None:
            await self.ws.send_text(text)

    # -- the session ----------------------------------------------------------------------

    async def run(self) -> None:
        created = "session.created" if self.dialect == "ga" else "transcription_session.created"
        await self.send({"type": created, "session": self._described(self.dialect)})
        writer = asyncio.create_task(self.writer())
        reader = asyncio.create_task(self.reader())
        try:
            done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is reader and not task.exception():
                    await self.outbox.put(None)  # write what is left, then close
                    await asyncio.wait_for(writer, timeout=5.0)
                elif e := task.exception():  # the client left (or its connection broke)
                    log.debug("realtime session %s ended: %r", self.id, e)
        except (TimeoutError, WebSocketDisconnect):
            pass
        finally:
            for task in (reader, writer, *self.transcriptions):
                task.cancel()
            # the transcriptions' own `finally` aborts their engine requests
            await asyncio.gather(reader, writer, *self.transcriptions, return_exceptions=True)
            if self.ws.client_state == WebSocketState.CONNECTED:
                try:
                    await self.ws.close()
                except Exception:
                    pass

    def _described(self, dialect: str) -> dict:
        return self.config.ga(self.id) if dialect == "ga" else self.config.beta(self.id)

    async def reader(self) -> None:
        handlers = {
            "session.update": self.on_update,
            "transcription_session.update": self.on_update,
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
        }
        limit = self.settings.realtime_max_event_bytes
        while True:
            try:
                message = await asyncio.wait_for(
                    self.ws.receive(), timeout=self.settings.realtime_idle_timeout_s
                )
            except TimeoutError:
                await self.error(
                    f"no event for {self.settings.realtime_idle_timeout_s:g} s: the session is "
                    "closed (--realtime-idle-timeout)",
                    "idle_timeout",
                )
                return
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            text = message.get("text")
            if text is None:
                await self.error(
                    "binary frames are not accepted: send JSON events as text, audio as base64 in "
                    "input_audio_buffer.append",
                    "invalid_event",
                )
                continue
            if len(text) > limit:
                await self.error(
                    f"event of {len(text):,} bytes is over the limit of {limit:,} "
                    "(--realtime-max-event-kb); send audio in smaller appends",
                    "event_too_large",
                )
                continue
            try:
                event = json.loads(text)
            except (ValueError, RecursionError):
                await self.error("the event is not valid JSON", "invalid_json")
                continue
            client_event = event.get("event_id") if isinstance(event, dict) else None
            client_event = client_event if isinstance(client_event, str) else None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                await self.error(
                    "an event is a JSON object with a string `type`",
                    "invalid_event",
                    client_event=client_event,
                )
                continue
            kind = event["type"]
            handler = handlers.get(kind)
            try:
                if handler is None:
                    if kind in CONVERSATION_EVENTS:
                        raise RealtimeError(
                            f"{kind} has no meaning in a transcription session",
                            "unsupported_event",
                            "type",
                        )
                    raise RealtimeError(
                        f"unknown event type {kind[:64]!r}", "invalid_event", "type"
                    )
                await handler(event)
            except RealtimeError as e:
                await self.error(e.message, e.code, e.param, client_event)

    async def on_update(self, event: dict) -> None:
        config, dialect = parse_update(event, self.config)
        if (config.language, config.prompt) != (self.config.language, self.config.prompt):
            self.config = config
            self.job = self._job()
        self.config = config
        await self.emit(self.buffer.configure(config.turn))
        updated = "session.updated" if dialect == "ga" else "transcription_session.updated"
        await self.send({"type": updated, "session": self._described(dialect)})

    async def on_append(self, event: dict) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("audio must be a base64 string", "invalid_value", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("audio is not valid base64", "invalid_audio", "audio") from None
        if kind := container_format(data[:16]):
            raise RealtimeError(
                f"audio looks like a {kind} file: send raw 16-bit PCM samples at {INPUT_RATE} Hz, "
                "mono, little-endian, without a header",
                "invalid_audio",
                "audio",
            )
        try:
            events = self.buffer.append(data)
        except ValueError as e:
            raise RealtimeError(
                f"{e} (pcm16: 2 bytes a sample)", "invalid_audio", "audio"
            ) from None
        await self.emit(events)

    async def on_commit(self, event: dict) -> None:
        try:
            events = self.buffer.commit()
        except ValueError as e:
            raise RealtimeError(
                f"cannot commit the input audio buffer: {e}", "input_audio_buffer_commit_empty"
            ) from None
        await self.emit(events)

    async def on_clear(self, event: dict) -> None:
        self.buffer.clear()
        self.item = None
        await self.send({"type": "input_audio_buffer.cleared"})

    async def emit(self, events: list) -> None:
        for e in events:
            if isinstance(e, SpeechStarted):
                self.item = self.item or random_id("item")
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": e.start_ms,
                        "item_id": self.item,
                    }
                )
            elif isinstance(e, SpeechStopped):
                self.item = self.item or random_id("item")
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "audio_end_ms": e.end_ms,
                        "item_id": self.item,
                    }
                )
            elif isinstance(e, Utterance):
                item, self.item = self.item or random_id("item"), None
                await self.committed(item, e)

    async def committed(self, item: str, utterance: Utterance) -> None:
        previous, self.previous = self.previous, item
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": previous}
        )
        added = "conversation.item.added" if self.dialect == "ga" else "conversation.item.created"
        await self.send(
            {"type": added, "previous_item_id": previous, "item": item_object(item, None)}
        )
        if len(self.transcriptions) >= self.settings.realtime_max_pending:
            await self.failed(
                item,
                f"{len(self.transcriptions)} transcriptions of this session are still running "
                "(--realtime-max-pending): the audio arrives faster than it is transcribed",
                "too_many_pending",
            )
            return
        task = asyncio.create_task(self.transcribe(item, utterance, time.monotonic()))
        self.transcriptions.add(task)
        task.add_done_callback(self.transcriptions.discard)

    async def failed(self, item: str, message: str, code: str) -> None:
        self.handlers.metrics.error(ENDPOINT, code)
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.failed",
                "item_id": item,
                "content_index": 0,
                "error": {
                    "type": "transcription_error",
                    "code": code,
                    "message": message,
                    "param": None,
                },
            }
        )

    async def transcribe(self, item: str, utterance: Utterance, t0: float) -> None:
        try:
            slot = self.handlers.admission.admit()
        except APIError as e:
            await self.failed(item, e.message, e.code or e.type)
            return
        rid = random_id("rt")
        gen = Generation(
            self.handlers.engine, self.job.engine_call(utterance.samples, rid), rid, slot.deadline
        )
        cleaner, parts, last = TextCleaner(), [], None
        try:
            try:
                while (out := await gen.next()) is not None:
                    last = out
                    if piece := cleaner.feed(out.text):
                        parts.append(piece)
                        await self._delta(item, piece)
                if piece := cleaner.flush():
                    parts.append(piece)
                    await self._delta(item, piece)
            except APIError as e:
                await self.failed(item, e.message, e.code or e.type)
                return
            except Exception:
                log.exception("realtime transcription %s", rid)
                await self.failed(item, "internal server error", "internal_error")
                return
            text = "".join(parts)
            usage = usage_object(last)
            self.handlers.metrics.usage(
                usage["input_tokens"],
                usage["input_token_details"]["audio_tokens"],
                usage["output_tokens"],
            )
            self.handlers.metrics.finished(ENDPOINT, time.monotonic() - t0)
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item,
                    "content_index": 0,
                    "transcript": text,
                    "usage": usage,
                }
            )
            if self.dialect == "ga":
                await self.send({"type": "conversation.item.done", "item": item_object(item, text)})
        finally:
            await gen.close()
            slot.release()

    async def _delta(self, item: str, piece: str) -> None:
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item,
                "content_index": 0,
                "delta": piece,
            }
        )
