"""The shared ASR path (`qwen_audio.asr`): segmentation at pauses, the chat/base rule, one text
for the command line and the server.

Speech is espeak-ng's (deterministic for a version, text and options), joined with silences of
known length, so the true speech boundaries are known to the sample.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from openai import OpenAI

from qwen_audio import asr
from qwen_audio.audio import load_audio
from qwen_audio.cli import main
from qwen_audio.config import default_model
from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)
SR = 16000
SENTENCES = [
    "The meeting will start at nine in the morning on Monday.",
    "Please bring the report and a pen.",
    "We will finish before lunch.",
]
SILENCES = [0.7, 1.2, 4.0, 2.0]  # before each sentence, and after the last


def speech(tmp: Path, text: str, i: int) -> np.ndarray:
    path = tmp / f"s{i}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return load_audio(str(path))


def joined(tmp: Path) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Silence, sentence, silence, ...; the true (start, end) of each sentence's sound."""
    parts, truth, at = [], [], 0
    for i, (pause, text) in enumerate(zip(SILENCES, SENTENCES)):
        clip = speech(tmp, text, i)
        loud = np.flatnonzero(np.abs(clip) > 0.01)
        parts += [np.zeros(int(pause * SR), np.float32), clip]
        at += int(pause * SR)
        truth.append(((at + loud[0]) / SR, (at + loud[-1]) / SR))
        at += len(clip)
    parts.append(np.zeros(int(SILENCES[-1] * SR), np.float32))
    return np.concatenate(parts), truth


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory) -> tuple[str, list[tuple[float, float]]]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    tmp = tmp_path_factory.mktemp("speech")
    samples, truth = joined(tmp)
    path = tmp / "three.wav"
    sf.write(path, samples, SR)
    return str(path), truth


# ---- segmentation ---------------------------------------------------------------------------


@needs_espeak
@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_vad_cuts_at_the_pauses(speech_file, noise):
    path, truth = speech_file
    samples = load_audio(path)
    samples = samples + noise * np.random.default_rng(0).standard_normal(len(samples))
    spans = asr.speech_spans(samples.astype(np.float32), backend="energy")
    assert len(spans) == len(truth)
    for span, (start, end) in zip(spans, truth):
        assert abs(span.start / SR - start) <= 0.3 and abs(span.end / SR - end) <= 0.3
    # the 4 s silence between the second and third sentence has no segment
    assert spans[1].end / SR < truth[1][1] + 0.3 and spans[2].start / SR > truth[2][0] - 0.3


@needs_espeak
def test_vad_keeps_segments_under_the_limit(speech_file):
    path, truth = speech_file
    spans = asr.speech_spans(load_audio(path), max_seconds=2.0, backend="energy")
    assert len(spans) > len(truth)  # the first two sentences are longer than 2 s
    assert all(0 < s.end - s.start <= 2 * SR for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
    assert spans[0].start / SR == pytest.approx(truth[0][0], abs=0.3)


def test_silence_and_clicks_get_no_segment():
    assert asr.speech_spans(np.zeros(5 * SR, np.float32), backend="energy") == []
    quiet = 1e-4 * np.random.default_rng(1).standard_normal(5 * SR).astype(np.float32)
    assert asr.speech_spans(quiet, backend="energy") == []
    click = np.zeros(5 * SR, np.float32)
    click[2 * SR : 2 * SR + 800] = 0.5  # 50 ms, far from anything else
    assert asr.speech_spans(click, backend="energy") == []


def test_short_speech_joins_a_close_neighbour():
    x = np.zeros(6 * SR, np.float32)
    x[1 * SR : 3 * SR] = 0.3  # 2 s of sound
    x[int(3.6 * SR) : int(3.75 * SR)] = 0.3  # 150 ms, 0.6 s after it
    spans = asr.speech_spans(x, backend="energy")
    assert len(spans) == 1
    assert spans[0].start / SR == pytest.approx(0.9, abs=0.02)
    assert spans[0].end / SR == pytest.approx(3.85, abs=0.02)


def test_segments_go_to_the_engine_longest_first():
    spans = [asr.Span(0, 2), asr.Span(2, 7), asr.Span(9, 14), asr.Span(20, 21)]
    assert asr.longest_first(spans) == [1, 2, 0, 3]  # ties keep file order
    assert asr.longest_first([]) == []


def test_fixed_windows_are_todays_30_s():
    assert [(s.start_s, s.end_s) for s in asr.split_audio(np.zeros(65 * SR), "fixed")] == [
        (0, 30),
        (30, 60),
        (60, 65),
    ]
    assert [(s.start_s, s.end_s) for s in asr.fixed_windows(int(60.5 * SR))] == [
        (0, 30),
        (30, 60.5),
    ]
    with pytest.raises(ValueError):
        asr.split_audio(np.zeros(SR), "windows")


# ---- prompts and the chat/base rule -----------------------------------------------------------


def fake_checkpoint(tmp_path: Path, template: bool, eos: tuple[int, ...]) -> SimpleNamespace:
    if template:
        (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    ids = {"<|endoftext|>": 1, "<|im_end|>": 2}
    return SimpleNamespace(
        path=tmp_path,
        tokenizer=SimpleNamespace(token_to_id=ids.get),
        generation=SimpleNamespace(eos_token_ids=eos),
    )


def test_style_is_read_from_the_checkpoint_not_its_name(tmp_path):
    instruct = tmp_path / "Qwen2-Audio-7B"  # no "instruct" in the name
    instruct.mkdir()
    assert asr.detect_style(fake_checkpoint(instruct, True, (1, 2))) == "chat"
    assert asr.detect_style(fake_checkpoint(instruct, True, ())) == "chat"
    base = tmp_path / "Qwen2-Audio-7B-Instruct-named-wrong"
    base.mkdir()
    assert asr.detect_style(fake_checkpoint(base, True, (1,))) == "base"  # stops at endoftext
    plain = tmp_path / "plain"
    plain.mkdir()
    assert asr.detect_style(fake_checkpoint(plain, False, (1, 2))) == "base"
    assert asr.detect_style(fake_checkpoint(plain, False, (1, 2)), "chat") == "chat"
    assert asr.detect_style(None) == "chat"
    with pytest.raises(ValueError):
        asr.detect_style(None, "instruct")


def test_one_language_table_and_prompts():
    assert asr.language_name("zh") == "Chinese" and asr.language_name("xx") == "xx"
    assert (
        asr.chat_instruction("transcribe", "fr")
        == "Transcribe the speech. The speech is in French."
    )
    assert asr.chat_instruction("translate", "fr", "names") == (
        "Translate the speech into English.\nContext: names"
    )
    assert asr.base_prompt("transcribe", "en") == (
        "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>"
    )


def test_cleaner_streamed_equals_whole():
    text = " <|en|><|en|> Hello there.  \n"
    whole, lang = asr.clean_text(text)
    assert whole == "Hello there." and lang == "en"
    cleaner = asr.TextCleaner()
    pieces = [cleaner.feed(c) for c in text] + [cleaner.flush()]
    assert "".join(pieces) == whole


# ---- the server: segments at pauses, all submitted at once -------------------------------------


@needs_espeak
def test_server_segments_at_pauses_and_streams_in_order(speech_file):
    path, truth = speech_file
    engine = FakeEngine()
    settings = ServerSettings(max_upload_mb=5.0)
    with live_server(create_app(engine, settings)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        data = Path(path).read_bytes()
        v = client.audio.transcriptions.create(
            model="m", file=("a.wav", data), response_format="verbose_json"
        )
        assert len(v.segments) == len(truth)
        sizes = [len(c["messages"][0]["content"][0]["audio"][0]) for c in engine.calls]
        assert len(set(sizes)) > 1 and sizes == sorted(sizes, reverse=True)  # longest first
        for seg, (start, end) in zip(v.segments, truth):
            assert abs(seg.start - start) <= 0.3 and abs(seg.end - end) <= 0.3
            assert seg.text.startswith(f"heard 1 audio(s) of {seg.end - seg.start:.1f} s")
        events = list(
            client.audio.transcriptions.create(model="m", file=("a.wav", data), stream=True)
        )
        assert "".join(e.delta for e in events[:-1]) == events[-1].text == v.text
        srt = client.audio.transcriptions.create(
            model="m", file=("a.wav", data), response_format="srt"
        )
        assert srt.count(" --> ") == len(truth)
        fixed = client.audio.transcriptions.create(
            model="m",
            file=("a.wav", data),
            response_format="verbose_json",
            extra_body={"segmentation": "fixed"},
        )
        assert [(s.start, s.end) for s in fixed.segments] == [(0.0, v.duration)]
        silent = np.zeros(3 * SR, np.float32)
        import io

        buf = io.BytesIO()
        sf.write(buf, silent, SR, format="WAV")
        calls = len(engine.calls)
        quiet = client.audio.transcriptions.create(
            model="m", file=("s.wav", buf.getvalue()), response_format="verbose_json"
        )
        assert quiet.text == "" and quiet.segments == [] and len(engine.calls) == calls


def test_server_transcription_times_out_and_ends_every_segment(speech_file):
    # one deadline per segment stream (Generation.drain), not per token: still a 504 when the
    # request's time is up, and every segment's engine request ends
    path, truth = speech_file
    engine = FakeEngine()
    settings = ServerSettings(max_upload_mb=5.0, request_timeout_s=0.5)
    with live_server(create_app(engine, settings)) as url:
        data = {"model": "m", "prompt": "[slow]"}  # the fake answers "[slow]" at 20 ms a token
        files = {"file": ("a.wav", Path(path).read_bytes(), "audio/wav")}
        r = httpx.post(url + "/v1/audio/transcriptions", data=data, files=files, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        deadline = time.monotonic() + 5
        while (engine.running or engine.waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not engine.running and not engine.waiting
        assert len(engine.closed) == len(engine.calls) == len(truth)  # none ran on
        ok = httpx.post(url + "/v1/audio/transcriptions", data={"model": "m"}, files=files)
        assert ok.status_code == 200 and ok.json()["text"].count("heard 1") == len(truth)


class WaitsForAll(FakeEngine):
    """Answers nothing until `n` requests have arrived: a file whose segments went to the engine
    one after another would never get its first answer (and fail after 10 s)."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.arrived, self.all_in = n, 0, None

    async def stream_chat(self, messages, params, request_id: str):
        self.all_in = self.all_in or asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.n:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 10)
        async for d in super().stream_chat(messages, params, request_id):
            yield d


@needs_espeak
def test_server_sends_all_segments_of_a_file_at_once(speech_file):
    path, truth = speech_file
    engine = WaitsForAll(len(truth))
    with live_server(create_app(engine, ServerSettings(max_upload_mb=5.0))) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = client.audio.transcriptions.create(model="m", file=("a.wav", Path(path).read_bytes()))
    assert r.text.count("heard 1 audio(s)") == len(truth) == engine.arrived


def test_max_segment_seconds_option(capsys):
    with pytest.raises(SystemExit):
        main(["transcribe", "x.wav", "--max-segment-seconds", "0.5"])
    assert "--max-segment-seconds" in capsys.readouterr().err
    assert asr.max_segment_seconds("12.5") == 12.5


# ---- the same text from the command line and the server, on the demo model ---------------------


@needs_espeak
@pytest.mark.parametrize(
    "options", [{}, {"language": "en"}, {"segmentation": "fixed"}], ids=["default", "en", "fixed"]
)
def test_cli_and_server_give_the_same_text_on_the_demo_model(
    speech_file, capsys, monkeypatch, options
):
    from qwen_audio.async_llm import AsyncLLM

    monkeypatch.delenv("QWEN_AUDIO_MODEL", raising=False)
    path, truth = speech_file
    flags = [x for k, v in options.items() for x in (f"--{k}", v)]
    args = ["transcribe", path, "--format", "verbose_json", "--dtype", "float32", *flags]
    assert main(args) == 0
    cli = json.loads(capsys.readouterr().out)
    assert main([*args[:3], "srt", *args[4:]]) == 0
    cli_srt = capsys.readouterr().out
    if not options:
        assert "will start at nine in the morning on Monday" in cli["text"]  # chat prompts
        assert len(cli["segments"]) == len(truth)

    engine = AsyncLLM(default_model(), dtype="float32")
    try:
        assert asr.detect_style(engine.checkpoint) == "chat"
        with live_server(create_app(engine, ServerSettings(max_upload_mb=5.0))) as url:
            client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            v, srt = (
                client.audio.transcriptions.create(
                    model="m",
                    file=("a.wav", Path(path).read_bytes()),
                    response_format=response_format,
                    language=options.get("language", openai.NOT_GIVEN),
                    extra_body={k: v for k, v in options.items() if k == "segmentation"},
                )
                for response_format in ("verbose_json", "srt")
            )
    finally:
        engine.shutdown()
    assert v.text == cli["text"] and v.text
    assert [(s.start, s.end, s.text) for s in v.segments] == [
        (s["start"], s["end"], s["text"]) for s in cli["segments"]
    ]
    assert srt.strip() == cli_srt.strip() and srt.count(" --> ") >= len(v.segments)


# ---- the command line: every segment of every file in one batch, a progress bar in audio seconds


class FakeLLM:
    """`LLM.chat` as `transcribe` uses it: records each batch (the samples of each segment, in
    the order submitted), finishes the last one first, answers "<n> samples."."""

    checkpoint = None  # chat prompts

    def __init__(self):
        self.batches: list[list[int]] = []

    def chat(self, convs, params, on_done=None):
        sizes = [len(c[0]["content"][0]["audio"][0]) for c in convs]
        self.batches.append(sizes)
        for i in reversed(range(len(convs))):
            if on_done is not None:
                on_done(i)
        return [
            SimpleNamespace(text=f"<|en|> {n} samples.", token_ids=[i]) for i, n in enumerate(sizes)
        ]


def samples_of(segment) -> int:
    """The sample count a FakeLLM answer names."""
    return int(segment.text.split()[0])


def transcribe_args(files, **kw) -> SimpleNamespace:
    base = dict(language=None, task="transcribe", style="auto", format="text", quiet=False)
    base.update(segmentation="vad", max_segment_seconds=20.0)
    return SimpleNamespace(files=files, **{**base, **kw})


@needs_espeak
def test_cli_sends_every_segment_of_every_file_at_once_with_audio_progress(
    speech_file, tmp_path, capsys, monkeypatch
):
    from qwen_audio.transcribe import transcribe, transcribe_files

    path, truth = speech_file
    short = tmp_path / "short.wav"
    sf.write(short, load_audio(path)[: 4 * SR], SR)  # the first sentence only
    llm, seen = FakeLLM(), []
    results = transcribe(llm, [path, str(short)], progress=lambda d, t: seen.append((d, t)))
    assert [len(b) for b in llm.batches] == [len(truth) + 1]  # one batch for both files
    assert llm.batches[0] == sorted(llm.batches[0], reverse=True)  # longest first
    assert [len(r.segments) for r in results] == [len(truth), 1]
    for seg in results[0].segments + results[1].segments:  # each text back at its segment
        assert samples_of(seg) == pytest.approx((seg.end - seg.start) * SR, abs=16)
    assert [s.start for s in results[0].segments] == sorted(s.start for s in results[0].segments)
    total = results[0].duration + results[1].duration
    assert all(t == total for _, t in seen) and len(seen) == len(truth) + 2
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == pytest.approx(total)
    speech = sum(s.end - s.start for r in results for s in r.segments)
    assert done[0] == pytest.approx(total - speech, abs=1e-3)  # the silence, before any text

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert transcribe_files(FakeLLM(), transcribe_args([path, str(short)])) == 0
    out, err = capsys.readouterr()
    three = " ".join(s.text for s in results[0].segments)
    assert out == f"# three.wav\n{three}\n# short.wav\n{results[1].segments[0].text}\n"
    assert "100%" in err and f"{total:.1f}/{total:.1f} s of audio" in err
    assert transcribe_files(FakeLLM(), transcribe_args([path], quiet=True)) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert transcribe_files(FakeLLM(), transcribe_args([path])) == 0
    assert capsys.readouterr().err == ""  # not a terminal: no bar


def test_llm_reports_each_finished_prompt(monkeypatch):
    from qwen_audio.llm import LLM
    from qwen_audio.sampling import SamplingParams

    monkeypatch.delenv("QWEN_AUDIO_MODEL", raising=False)
    llm = LLM(default_model(), dtype="float32")
    seen: list[int] = []
    params = SamplingParams(temperature=0.0, max_tokens=4)
    convs = [[{"role": "user", "content": t}] for t in ("Hi.", "Say something long.", "Why?")]
    assert len(llm.chat(convs, params, on_done=seen.append)) == 3
    assert sorted(seen) == [0, 1, 2]
    seen.clear()
    llm.generate(["a", "b"], params, on_done=seen.append)
    assert sorted(seen) == [0, 1]
