"""The event shapes of /v1/realtime (OpenAI's Realtime API, transcription sessions): the session
configuration, its GA (`session.update`, `session.type: "transcription"`) and beta
(`transcription_session.update`, or the same flat fields in `session.update`) forms, and the
objects the server's events carry. Fields not sent keep their values; unknown fields are
ignored; values this server cannot honour (another audio format, semantic VAD, a conversation
session) are refused with an error naming the field."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from qwen_audio.asr.streaming import INPUT_RATE, TurnDetection
from qwen_audio.audio_io import _SIGNATURES

from . import transcription as tr
from .limits import is_valid_unicode
from .protocol import APIError

# Client events of OpenAI's conversation sessions that have no meaning in a transcription one.
CONVERSATION_EVENTS = (
    "response.create",
    "response.cancel",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "output_audio_buffer.clear",
)


class RealtimeError(Exception):
    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def container_format(head: bytes) -> str | None:
    """The file format whose header `head` starts with (a WAV or MP3 file sent as if it were raw
    samples), by the loader's table of magic bytes; None for anything else."""
    if head[4:8] == b"ftyp":
        return "mp4/m4a"
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def event_id() -> str:
    return "event_" + uuid.uuid4().hex[:20]


def error_event(
    message: str, code: str, param: str | None = None, client_event: str | None = None
) -> dict:
    """An `error` event; `event_id` inside `error` is the client event that caused it."""
    error = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
    return {"type": "error", "event_id": event_id(), "error": error | {"event_id": client_event}}


@dataclass(frozen=True)
class SessionConfig:
    """What a client can set; `turn` None: the client commits."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    turn: TurnDetection | None = TurnDetection()

    def ga(self, session_id: str) -> dict:
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": INPUT_RATE},
                    "transcription": self._transcription(),
                    "turn_detection": self._turn(),
                    "noise_reduction": None,
                }
            },
            "include": [],
        }

    def beta(self, session_id: str) -> dict:
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "input_audio_format": "pcm16",
            "input_audio_transcription": self._transcription(),
            "turn_detection": self._turn(),
            "input_audio_noise_reduction": None,
            "modalities": ["text"],
            "include": [],
        }

    def _transcription(self) -> dict:
        return {"model": self.model, "language": self.language, "prompt": self.prompt or ""}

    def _turn(self) -> dict | None:
        if self.turn is None:
            return None
        t = self.turn
        return {
            "type": "server_vad",
            "threshold": t.threshold,
            "prefix_padding_ms": t.prefix_padding_ms,
            "silence_duration_ms": t.silence_duration_ms,
        }


def _object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise RealtimeError(f"{param} must be an object", "invalid_value", param)
    return value


def _number(d: dict, key: str, param: str, lo: float, hi: float, integer: bool) -> Any:
    value = d[key]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise RealtimeError(f"{param}.{key} must be {what} in [{lo}, {hi}]", "invalid_value", param)
    return value


def parse_update(event: dict, config: SessionConfig) -> tuple[SessionConfig, str]:
    """The configuration after a session.update / transcription_session.update, and the dialect
    ("ga" or "beta") of its shape. Fields not sent keep their values; unknown fields are ignored,
    values this server cannot honour are refused."""
    session = _object(event.get("session"), "session")
    if event["type"] == "session.update" and ("type" in session or "audio" in session):
        if session.get("type") != "transcription":
            raise RealtimeError(
                "this server offers transcription sessions only: session.type must be "
                "'transcription'",
                "invalid_value",
                "session.type",
            )
        dialect, prefix = "ga", "session.audio.input"
        audio_input = _object(
            _object(session.get("audio", {}), "session.audio").get("input", {}), prefix
        )
        fmt, transcription = audio_input.get("format"), audio_input.get("transcription")
        turn_key, turn = "turn_detection" in audio_input, audio_input.get("turn_detection")
        if fmt is not None:
            fmt = _object(fmt, f"{prefix}.format")
            if (
                fmt.get("type", "audio/pcm") != "audio/pcm"
                or fmt.get("rate", INPUT_RATE) != INPUT_RATE
            ):
                raise RealtimeError(
                    f"unsupported audio format {fmt}: only audio/pcm (16-bit) at {INPUT_RATE} Hz",
                    "unsupported_audio_format",
                    f"{prefix}.format",
                )
    else:
        dialect, prefix = "beta", "session"
        fmt, transcription = (
            session.get("input_audio_format"),
            session.get("input_audio_transcription"),
        )
        turn_key, turn = "turn_detection" in session, session.get("turn_detection")
        if fmt is not None and fmt != "pcm16":
            raise RealtimeError(
                f"unsupported input_audio_format {fmt!r}: only pcm16 ({INPUT_RATE} Hz)",
                "unsupported_audio_format",
                "session.input_audio_format",
            )
    fields: dict[str, Any] = {}
    if transcription is not None:
        param = (
            f"{prefix}.transcription" if dialect == "ga" else "session.input_audio_transcription"
        )
        t = _object(transcription, param)
        if "model" in t:
            fields["model"] = t["model"] if isinstance(t["model"], str) else None
        if "language" in t:
            fields["language"] = _language(t["language"], f"{param}.language")
        if "prompt" in t:
            fields["prompt"] = _prompt(t["prompt"], f"{param}.prompt")
    if turn_key:
        fields["turn"] = _turn(turn, config.turn, f"{prefix}.turn_detection")
    return replace(config, **fields), dialect


def _language(value: Any, param: str) -> str | None:
    if value in (None, ""):
        return None
    form = tr.AudioForm(language=value if isinstance(value, str) else "?")
    try:
        form.check()
    except APIError as e:
        raise RealtimeError(e.message, "invalid_value", param) from None
    return form.language


def _prompt(value: Any, param: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not is_valid_unicode(value) or len(value) > 4000:
        raise RealtimeError(
            "prompt must be valid text of at most 4000 characters", "invalid_value", param
        )
    return value


def _turn(value: Any, current: TurnDetection | None, param: str) -> TurnDetection | None:
    if value is None:
        return None
    d = _object(value, param)
    if d.get("type", "server_vad") != "server_vad":
        raise RealtimeError(
            f"turn_detection type {d.get('type')!r} is not supported: use server_vad or null",
            "unsupported_turn_detection",
            f"{param}.type",
        )
    base = current or TurnDetection()
    fields: dict[str, Any] = {}
    if d.get("threshold") is not None:
        fields["threshold"] = float(_number(d, "threshold", param, 0.0, 1.0, integer=False))
    if d.get("prefix_padding_ms") is not None:
        fields["prefix_padding_ms"] = _number(d, "prefix_padding_ms", param, 0, 5000, integer=True)
    if d.get("silence_duration_ms") is not None:
        fields["silence_duration_ms"] = _number(d, "silence_duration_ms", param, 100, 10000, True)
    return replace(base, **fields)


def item_object(item: str, transcript: str | None) -> dict:
    return {
        "id": item,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def usage_object(out: Any) -> dict:
    prompt = getattr(out, "prompt_tokens", 0)
    audio = getattr(out, "audio_tokens", 0)
    completion = getattr(out, "completion_tokens", 0)
    return {
        "type": "tokens",
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_token_details": {"audio_tokens": audio, "text_tokens": prompt - audio},
    }
