"""SRT, WebVTT and the segment records of json / verbose_json, for the CLI and the server.

A segment here is any object with `start`, `end` (seconds) and `text`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(segments: Sequence[Any]) -> str:
    lines: list[str] = []
    for i, seg in enumerate(segments, start=1):
        lines += [str(i), f"{timestamp(seg.start, ',')} --> {timestamp(seg.end, ',')}", seg.text]
        lines.append("")
    return "\n".join(lines)


def vtt(segments: Sequence[Any]) -> str:
    lines = ["WEBVTT", ""]
    for seg in segments:
        lines += [f"{timestamp(seg.start, '.')} --> {timestamp(seg.end, '.')}", seg.text, ""]
    return "\n".join(lines)


def segment_records(segments: Sequence[Any], temperature: float = 0.0) -> list[dict[str, Any]]:
    """OpenAI's verbose_json segment objects (Whisper's fields; avg_logprob and no_speech_prob
    are not computed here)."""
    from .text import compression_ratio

    return [
        {
            "id": i,
            "seek": round(seg.start * 100),  # 10 ms frames
            "start": round(seg.start, 3),
            "end": round(seg.end, 3),
            "text": seg.text,
            "tokens": list(getattr(seg, "tokens", []) or []),
            "temperature": temperature,
            "compression_ratio": round(compression_ratio(seg.text), 4),
            "avg_logprob": None,
            "no_speech_prob": None,
        }
        for i, seg in enumerate(segments)
    ]
