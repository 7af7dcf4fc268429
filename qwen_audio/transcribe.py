"""Transcription of whole files: 30 s windows, one request each, timed segments.

The encoder hears at most 30 s, so a long file is cut into consecutive 30 s windows; every window
is transcribed on its own (all windows of all files in one engine batch) and becomes one segment
with the window's start and end time. The prompt depends on the model:
- Instruct (chat): the window's audio plus "Transcribe the speech." (or a translation request);
- base: the original ASR prompt `Detect the language and recognize the speech: <|en|>`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .audio import SAMPLE_RATE, load_audio
from .llm import LLM
from .sampling import SamplingParams

WINDOW_SAMPLES = 30 * SAMPLE_RATE  # 480000 samples in a 30-second window
AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"
LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "yue": "Cantonese", "fr": "French", "de": "German",
    "es": "Spanish", "it": "Italian", "ja": "Japanese", "ko": "Korean", "ru": "Russian",
    "pt": "Portuguese", "nl": "Dutch", "ar": "Arabic",
}  # fmt: skip
TAG = re.compile(r"<\|[^|>]*\|>")


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str


def detect_style(llm: LLM) -> str:
    """chat for Instruct checkpoints (named so, or shipping a chat template file), else base."""
    path = llm.checkpoint.path
    if "instruct" in path.name.lower():
        return "chat"
    has_template = (path / "chat_template.json").exists() or (path / "chat_template.jinja").exists()
    return "chat" if has_template else "base"


def window_bounds(num_samples: int) -> list[tuple[int, int]]:
    return [
        (s, min(s + WINDOW_SAMPLES, num_samples)) for s in range(0, num_samples, WINDOW_SAMPLES)
    ]


def chat_instruction(task: str, language: str | None) -> str:
    if task == "translate":
        return "Translate the speech into English."
    if language:
        return f"Transcribe the speech. The language is {LANGUAGE_NAMES.get(language, language)}."
    return "Transcribe the speech."


def base_prompt(task: str, language: str | None) -> str:
    tag = f" <|{language}|>" if language else ""
    if task == "translate":
        return f"{AUDIO}Detect the language and translate the speech into English:{tag}"
    return f"{AUDIO}Detect the language and recognize the speech:{tag}"


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", TAG.sub(" ", text)).strip()


def transcribe(
    llm: LLM,
    files: list[str],
    *,
    language: str | None = None,
    task: str = "transcribe",
    style: str = "auto",
    max_tokens: int = 448,
) -> list[list[Segment]]:
    """Segments per file; every window of every file goes through the engine in one batch."""
    style = detect_style(llm) if style == "auto" else style
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    jobs: list[tuple[int, float, float]] = []
    audios = []
    for i, f in enumerate(files):
        samples = load_audio(f)
        for start, end in window_bounds(len(samples)):
            jobs.append((i, start / SAMPLE_RATE, end / SAMPLE_RATE))
            audios.append((samples[start:end], SAMPLE_RATE))
    if style == "chat":
        text = chat_instruction(task, language)
        convs = [
            [
                {
                    "role": "user",
                    "content": [{"type": "audio", "audio": a}, {"type": "text", "text": text}],
                }
            ]
            for a in audios
        ]
        results = llm.chat(convs, params)
    else:
        prompt = base_prompt(task, language)
        results = llm.generate([prompt] * len(audios), params, audios=[[a] for a in audios])
    segments: list[list[Segment]] = [[] for _ in files]
    for (i, start, end), r in zip(jobs, results):
        segments[i].append(Segment(round(start, 3), round(end, 3), clean(r.text)))
    return segments


def timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def format_segments(segments: list[Segment], fmt: str) -> str:
    if fmt == "text":
        return " ".join(s.text for s in segments if s.text)
    if fmt == "json":
        text = " ".join(s.text for s in segments if s.text)
        return json.dumps(
            {"text": text, "segments": [asdict(s) for s in segments]}, ensure_ascii=False
        )
    if fmt == "srt":
        blocks = [
            f"{n}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text}\n"
            for n, s in enumerate(segments, 1)
        ]
        return "\n".join(blocks)
    if fmt == "vtt":
        cues = [
            f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text}\n" for s in segments
        ]
        return "WEBVTT\n\n" + "\n".join(cues)
    raise ValueError(f"unknown format {fmt!r}; use text, json, srt or vtt")


def transcribe_files(llm: LLM, args) -> int:
    results = transcribe(llm, args.files, language=args.language, task=args.task, style=args.style)
    for f, segs in zip(args.files, results):
        if len(args.files) > 1 and args.format in ("text", "srt", "vtt"):
            print(f"# {Path(f).name}", file=sys.stdout)
        print(format_segments(segs, args.format))
    return 0
