"""Speech recognition shared by `qwen-audio transcribe` and the server's audio endpoints.

One path from audio to text, so the command line and `/v1/audio/transcriptions` (and
`/translations`) give the same text for the same file and options:
- `segment`: where a file is cut: at pauses (energy voice-activity detection, or Silero VAD when
  the `silero-vad` package is installed) into segments of at most `max_seconds`, or fixed 30 s
  windows; silence gets no segment;
- `prompts`: the one language table, the prompt per style (chat for Instruct checkpoints, the raw
  ASR prompt for base ones) and the rule that picks the style from the checkpoint;
- `text`: the tag cleaner (streaming, so the server's deltas add up to the same text);
- `formats`: SRT and WebVTT (a cue per segment, long ones split at punctuation) and the segment
  records of json / verbose_json.
Nothing here imports torch; the engine is called by the front-ends.
"""

from .formats import MAX_CUE_CHARS, Cue, cues, segment_records, split_text, srt, timestamp, vtt
from .prompts import (
    LANGUAGES,
    STYLES,
    base_prompt,
    chat_instruction,
    detect_style,
    language_name,
)
from .segment import (
    DEFAULT_MAX_SECONDS,
    SEGMENTATIONS,
    WINDOW_SECONDS,
    Span,
    fixed_windows,
    longest_first,
    max_segment_seconds,
    speech_spans,
    split_audio,
)
from .text import TextCleaner, clean_text, compression_ratio

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "LANGUAGES",
    "MAX_CUE_CHARS",
    "SEGMENTATIONS",
    "STYLES",
    "WINDOW_SECONDS",
    "Cue",
    "Span",
    "TextCleaner",
    "base_prompt",
    "chat_instruction",
    "clean_text",
    "compression_ratio",
    "cues",
    "detect_style",
    "fixed_windows",
    "language_name",
    "longest_first",
    "max_segment_seconds",
    "segment_records",
    "speech_spans",
    "split_text",
    "split_audio",
    "srt",
    "timestamp",
    "vtt",
]
