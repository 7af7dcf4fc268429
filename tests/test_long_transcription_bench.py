"""benchmarks/long_transcription.py (issue 18's long-file targets) on a short recording: the
recording's truth, the boundary score, and one quick end-to-end run (no timing is checked)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"
)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "long_transcription", REPO / "benchmarks" / "long_transcription.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_recording_holds_the_sentences_where_its_truth_says(bench, tmp_path):
    rec = bench.build_recording(tmp_path / "r.wav", 0, 3, 14.0, seed=1)
    audio, sr = sf.read(rec.path, dtype="float32")
    assert sr == 16000 and rec.duration == pytest.approx(len(audio) / sr, abs=1e-3)
    assert rec.duration == pytest.approx(14.0, abs=0.1)
    texts = [s.text for s in rec.sentences]
    assert texts == [s.text for s in bench.heldout_specs(0, 3)] and len(set(texts)) == 3
    bounds = [(0.0, 0.0)] + [(s.start, s.end) for s in rec.sentences] + [(rec.duration, 0)]
    for (_, prev_end), (start, end) in zip(bounds, bounds[1:]):
        if end:  # speech inside each sentence, only noise in the pause before it
            assert start - prev_end >= bench.MIN_PAUSE - 1e-3
            assert np.abs(audio[int(start * sr) : int(end * sr)]).max() > 0.1
        gap = audio[int((prev_end + 0.01) * sr) : int((start - 0.01) * sr)]
        assert np.abs(gap).max() < 0.01
    again = bench.build_recording(tmp_path / "r.wav", 0, 3, 14.0, seed=1)  # cached
    assert again == rec


def test_boundary_score(bench):
    rec = bench.Recording(
        "x.wav", 10.0, [bench.Sentence("a", 1.0, 2.0), bench.Sentence("b", 4.0, 6.0)]
    )
    exact = [{"start": 0.9, "end": 2.1}, {"start": 3.9, "end": 6.1}]
    assert bench.boundary_hits(rec, exact)["boundaries_within_0.3s"] == 1.0
    merged = [{"start": 0.9, "end": 6.1}]  # one segment over both: the middle two are missed
    assert bench.boundary_hits(rec, merged)["boundaries_within_0.3s"] == 0.5
    late = [{"start": 1.35, "end": 2.0}, {"start": 4.0, "end": 6.4}]
    assert bench.boundary_hits(rec, late)["boundaries_within_0.3s"] == 0.5
    assert bench.boundary_hits(rec, [])["boundaries_within_0.3s"] == 0.0


@pytest.mark.slow
def test_quick_run_end_to_end(bench, tmp_path, monkeypatch):
    monkeypatch.delenv("QWEN_AUDIO_MODEL", raising=False)
    out = tmp_path / "results.json"
    args = ["--work", str(tmp_path), "--sentences", "2", "--seconds", "10", "--no-speed"]
    assert bench.main([*args, "--json", str(out)]) == 0
    q = json.loads(out.read_text())["quality"]
    assert q["prompt_style"] == "chat" and q["cli_equals_server"] is True
    assert q["cli_boundaries"]["segments"] == 2
    assert q["cli_boundaries"]["boundaries_within_0.3s"] == 1.0
    assert q["cli_wer"] == q["server_wer"] and q["one_by_one_wer"] is not None
