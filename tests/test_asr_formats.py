"""Subtitles and segment records (qwen_audio.asr.formats): a cue per segment, long segments split
at punctuation with their time shared in proportion to characters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from qwen_audio import asr
from qwen_audio.asr.formats import MAX_CUE_CHARS, cues, split_text

S1 = "The meeting will start at nine in the morning on Monday."  # 56 characters
S2 = "Please bring the report and a pen, and your laptop."  # 51
S3 = "We will finish before lunch."  # 28


def seg(start: float, end: float, text: str, tokens=()) -> SimpleNamespace:
    return SimpleNamespace(start=start, end=end, text=text, tokens=list(tokens))


@pytest.mark.parametrize(
    "text, max_chars, pieces",
    [
        ("Short enough.", 84, ["Short enough."]),
        (f"{S1} {S2} {S3}", 84, [S1, f"{S2} {S3}"]),  # the last sentence end that fits
        (f"{S1} {S2} {S3}", 60, [S1, S2, S3]),
        # no sentence end fits: the clause mark; a sentence end too early is not taken
        ("Yes. " + "one two three, four five six seven eight", 30,
         ["Yes. one two three,", "four five six seven eight"]),
        # no punctuation: the space nearest an even split, not the last one that fits
        ("aa " * 20, 40, ["aa " * 9 + "aa", "aa " * 9 + "aa"]),
        ("a" * 25, 10, ["a" * 10, "a" * 10, "a" * 5]),  # one long word is cut inside
        ("3.5 million people came, said Dr. Smith", 20,
         ["3.5 million people", "came, said Dr. Smith"]),  # "3.5" is no sentence end
        ("我们明天早上九点开会，请带上报告和笔。我们会在午饭前结束。", 20,
         ["我们明天早上九点开会，请带上报告和笔。", "我们会在午饭前结束。"]),
    ],
)  # fmt: skip
def test_split_text(text, max_chars, pieces):
    assert split_text(text, max_chars) == pieces
    assert all(len(p) <= max_chars for p in pieces)


def test_a_long_segment_shares_its_time_by_characters():
    text = f"{S1} {S2} {S3}"
    (a, b) = cues([seg(10.0, 20.0, text)])
    chars = len(S1) + len(S2) + 1 + len(S3)
    assert (a.start, a.text) == (10.0, S1) and b.text == f"{S2} {S3}"
    assert a.end == b.start == round(10.0 + 10.0 * len(S1) / chars, 3)
    assert b.end == 20.0


def test_srt_and_vtt_cues_at_segment_boundaries():
    segments = [seg(0.5, 3.25, S3), seg(4.0, 16.0, f"{S1} {S2}"), seg(3600.0, 3601.5, "Bye.")]
    srt = asr.srt(segments)
    assert srt.startswith("1\n00:00:00,500 --> 00:00:03,250\nWe will finish before lunch.\n\n2\n")
    assert "2\n00:00:04,000 --> 00:00:10,280\n" + S1 in srt  # 12 s x 56 / 107 characters
    assert "3\n00:00:10,280 --> 00:00:16,000\n" + S2 in srt
    assert srt.endswith("4\n01:00:00,000 --> 01:00:01,500\nBye.\n")
    vtt = asr.vtt(segments)
    assert vtt.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:03.250\n" + S3)
    assert vtt.count(" --> ") == 4 and "00:00:10.280 --> 00:00:16.000\n" + S2 in vtt
    assert asr.srt([]) == "" and asr.vtt([]) == "WEBVTT\n"
    assert asr.srt([seg(0, 1, "x" * 200)], max_chars=1000).count(" --> ") == 1
    assert MAX_CUE_CHARS == 84


def test_verbose_json_keeps_one_record_per_segment_with_its_times():
    long = f"{S1} {S2} {S3}"
    records = asr.segment_records([seg(1.23456, 9.87654, long, [1, 2]), seg(10.0, 11.0, S3)])
    assert [(r["id"], r["start"], r["end"], r["text"]) for r in records] == [
        (0, 1.235, 9.877, long),
        (1, 10.0, 11.0, S3),
    ]
    assert records[0]["seek"] == 123 and records[0]["tokens"] == [1, 2]
    assert records[1]["compression_ratio"] == round(asr.compression_ratio(S3), 4)
