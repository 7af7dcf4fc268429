"""SRT, WebVTT and the segment records of json / verbose_json, for the CLI and the server.

A segment here is any object with `start`, `end` (seconds) and `text`. verbose_json keeps one
record per segment (its true start and end). Subtitles get one cue per segment, except that a
segment whose text is longer than `MAX_CUE_CHARS` is split for readability: at the end of a
sentence if one falls in the allowed length, else at a clause mark (, ; : and their CJK forms),
else at the space nearest an even split; the segment's time is shared among its cues in
proportion to their characters (the model gives no word times).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_CUE_CHARS = 84  # two subtitle lines of 42 characters, the usual broadcast limit
SENTENCE_ENDS = ".!?\u3002\uff01\uff1f"  # . ! ? and the CJK 。！？
CLAUSE_MARKS = ",;:\u3001\uff0c\uff1b\uff1a"  # , ; : and the CJK 、，；：
CJK_MARKS = "\u3002\uff01\uff1f\u3001\uff0c\uff1b\uff1a"  # need no space after them


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


def timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _breaks(text: str, marks: str) -> list[int]:
    """Positions just after a mark in `marks` that ends a word (followed by a space or the end,
    or any CJK mark), where the text may be cut."""
    out = []
    for i, ch in enumerate(text[:-1]):
        if ch in marks and (ch in CJK_MARKS or text[i + 1].isspace()):
            out.append(i + 1)
    return out


def split_text(text: str, max_chars: int = MAX_CUE_CHARS) -> list[str]:
    """`text` in pieces of at most `max_chars` characters where words allow, cut at the last
    sentence end that leaves the first piece at least a third of the limit, else the last clause
    mark, else the space nearest an even split (a word longer than the limit is cut inside)."""
    text = text.strip()
    pieces: list[str] = []
    while len(text) > max_chars:
        shortest = max_chars // 3
        cut = None
        for marks in (SENTENCE_ENDS, CLAUSE_MARKS):
            fits = [i for i in _breaks(text, marks) if shortest <= i <= max_chars]
            if fits:
                cut = fits[-1]
                break
        if cut is None:
            n = -(-len(text) // max_chars)  # pieces needed at least
            target = len(text) / n
            spaces = [i for i, ch in enumerate(text[: max_chars + 1]) if ch.isspace() and i > 0]
            cut = min(spaces, key=lambda i: abs(i - target)) if spaces else max_chars
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


def cues(segments: Sequence[Any], max_chars: int = MAX_CUE_CHARS) -> list[Cue]:
    """Subtitle cues: one per segment, long segments split by `split_text`, the segment's time
    shared among its pieces in proportion to their characters."""
    out: list[Cue] = []
    for seg in segments:
        pieces = split_text(seg.text, max_chars)
        total = sum(len(p) for p in pieces) or 1
        start, done = seg.start, 0
        for p in pieces:
            done += len(p)
            end = seg.end if done == total else seg.start + (seg.end - seg.start) * done / total
            out.append(Cue(round(start, 3), round(end, 3), p))
            start = end
    return out


def srt(segments: Sequence[Any], max_chars: int = MAX_CUE_CHARS) -> str:
    lines: list[str] = []
    for i, cue in enumerate(cues(segments, max_chars), start=1):
        lines += [str(i), f"{timestamp(cue.start, ',')} --> {timestamp(cue.end, ',')}", cue.text]
        lines.append("")
    return "\n".join(lines)


def vtt(segments: Sequence[Any], max_chars: int = MAX_CUE_CHARS) -> str:
    lines = ["WEBVTT", ""]
    for cue in cues(segments, max_chars):
        lines += [f"{timestamp(cue.start, '.')} --> {timestamp(cue.end, '.')}", cue.text, ""]
    return "\n".join(lines)


def segment_records(segments: Sequence[Any], temperature: float = 0.0) -> list[dict[str, Any]]:
    """OpenAI's verbose_json segment objects (Whisper's fields), one per segment with its true
    start and end; avg_logprob and no_speech_prob are not computed here."""
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
