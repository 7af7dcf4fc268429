"""`qwen-audio transcribe`: whole files through the shared ASR path (`qwen_audio.asr`).

Every file is cut into segments (at pauses by default, or fixed 30 s windows with
`--segmentation fixed`); all segments of all files go to the engine in one batch, so continuous
batching runs them together. Prompts, the chat/base rule, tag clean-up and the output formats are
the server's (`/v1/audio/transcriptions`), so both give the same text for the same file and options.
A progress bar on stderr counts the seconds of audio done (silence counts as done once found);
it is off when stderr is not a terminal or with `--quiet`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import asr
from .audio import SAMPLE_RATE, load_audio
from .llm import LLM
from .sampling import SamplingParams

FORMATS = ("text", "json", "verbose_json", "srt", "vtt")


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)


@dataclass
class FileResult:
    duration: float
    segments: list[Segment]
    language: str | None = None  # a tag the model wrote, else None

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


def transcribe(
    llm: LLM,
    files: list[str],
    *,
    language: str | None = None,
    task: str = "transcribe",
    style: str = "auto",
    max_tokens: int = 448,
    segmentation: str = "vad",
    max_segment_seconds: float = asr.DEFAULT_MAX_SECONDS,
    progress: Callable[[float, float], None] | None = None,
) -> list[FileResult]:
    """A result per file; every segment of every file goes through the engine in one batch.
    Segments whose text is empty after clean-up are left out. `progress(done, total)` is told
    the seconds of audio done out of all files' seconds: first when every file is segmented
    (the silence between segments is done then), then as each segment's text arrives."""
    style = asr.detect_style(llm.checkpoint, style)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    jobs: list[tuple[int, asr.Span]] = []
    audios = []
    durations = []
    for i, f in enumerate(files):
        samples = load_audio(f)
        durations.append(round(len(samples) / SAMPLE_RATE, 3))
        spans = asr.split_audio(samples, segmentation, max_segment_seconds)
        for span in spans:
            jobs.append((i, span))
            audios.append((samples[span.start : span.end], SAMPLE_RATE))
    # submitted longest first (asr.longest_first); results come back in submission order
    order = asr.longest_first([span for _, span in jobs])
    submitted = [audios[j] for j in order]
    on_done = None
    if progress is not None:
        total = sum(durations)
        done = total - sum(span.end - span.start for _, span in jobs) / SAMPLE_RATE
        progress(done, total)

        def on_done(k: int) -> None:
            nonlocal done
            span = jobs[order[k]][1]
            done += (span.end - span.start) / SAMPLE_RATE
            progress(min(done, total), total)

    if not audios:
        results = []
    elif style == "chat":
        text = asr.chat_instruction(task, language)
        convs = [
            [
                {
                    "role": "user",
                    "content": [{"type": "audio", "audio": a}, {"type": "text", "text": text}],
                }
            ]
            for a in submitted
        ]
        results = llm.chat(convs, params, on_done=on_done)
    else:
        prompt = asr.base_prompt(task, language)
        audio_lists = [[a] for a in submitted]
        results = llm.generate([prompt] * len(audios), params, audios=audio_lists, on_done=on_done)
    by_job = [None] * len(jobs)
    for j, r in zip(order, results):
        by_job[j] = r
    out = [FileResult(d, []) for d in durations]
    for (i, span), r in zip(jobs, by_job):
        text, tag = asr.clean_text(r.text)
        out[i].language = out[i].language or tag
        if text:
            ids = list(getattr(r, "token_ids", []) or [])
            out[i].segments.append(Segment(span.start_s, span.end_s, text, ids))
    return out


def format_result(result: FileResult, fmt: str, *, task: str, language: str | None) -> str:
    if fmt == "text":
        return result.text
    if fmt == "json":
        segments = [{"start": s.start, "end": s.end, "text": s.text} for s in result.segments]
        return json.dumps({"text": result.text, "segments": segments}, ensure_ascii=False)
    if fmt == "verbose_json":
        code = language or result.language or "unknown"
        body = {
            "task": task,
            "language": asr.language_name(code).lower(),
            "duration": result.duration,
            "text": result.text,
            "segments": asr.segment_records(result.segments),
        }
        return json.dumps(body, ensure_ascii=False)
    if fmt == "srt":
        return asr.srt(result.segments)
    if fmt == "vtt":
        return asr.vtt(result.segments)
    raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")


class ProgressBar:
    """A tqdm bar on stderr in seconds of audio; `transcribe`'s `progress`."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(
            total=0,
            desc="transcribing",
            unit="s",
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
            "[{elapsed}<{remaining}]",
        )

    def __call__(self, done: float, total: float) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def transcribe_files(llm: LLM, args) -> int:
    quiet = getattr(args, "quiet", False) or not sys.stderr.isatty()
    bar = None if quiet else ProgressBar()
    try:
        results = transcribe(
            llm,
            args.files,
            language=args.language,
            task=args.task,
            style=args.style,
            segmentation=getattr(args, "segmentation", "vad"),
            max_segment_seconds=getattr(args, "max_segment_seconds", asr.DEFAULT_MAX_SECONDS),
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    for f, result in zip(args.files, results):
        if len(args.files) > 1 and args.format in ("text", "srt", "vtt"):
            print(f"# {Path(f).name}", file=sys.stdout)
        print(format_result(result, args.format, task=args.task, language=args.language))
    return 0
