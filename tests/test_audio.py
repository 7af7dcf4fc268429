"""Audio front-end: loading, log-mel features and token counts against transformers (test-only)."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import logging
import math
import shutil
import subprocess
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from qwen_audio.audio import (
    MIN_SAMPLES,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioClip,
    AudioError,
    audio_content_hash,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    num_audio_tokens,
    prepare_audio,
)

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # the contract: max abs difference to WhisperFeatureExtractor in float32
CLIP_SECONDS = [0.2, 1.5, 7.0, 29.9, 30.0]


def make_clip(num_samples: int, seed: int = 0) -> np.ndarray:
    """Noise plus a 440 Hz sine, float32."""
    t = np.arange(num_samples) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(num_samples)
    return (0.05 * noise + 0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


@functools.lru_cache(maxsize=2)
def feature_extractor(n_mels: int):
    return transformers.WhisperFeatureExtractor(feature_size=n_mels)


def reference(samples: np.ndarray, n_mels: int) -> tuple[np.ndarray, int]:
    """The reference's (n_mels, 3000) features and its number of valid frames."""
    out = feature_extractor(n_mels)(
        samples, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="np"
    )
    return out["input_features"][0], int(out["attention_mask"].sum())


@functools.lru_cache(maxsize=1)
def processor():
    """A Qwen2AudioProcessor with a tiny word-level tokenizer holding the special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|endoftext|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"],
    )
    return transformers.Qwen2AudioProcessor(
        feature_extractor=feature_extractor(128), tokenizer=fast
    )


def reference_num_tokens(samples: np.ndarray) -> int:
    proc = processor()
    out = proc(
        text="<|audio_bos|><|AUDIO|><|audio_eos|>",
        audio=[samples],
        sampling_rate=SAMPLE_RATE,
        return_tensors="np",
    )
    return int((out["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum())


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )  # (201, n_mels) float64
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref.T, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", CLIP_SECONDS)
def test_log_mel_matches_whisper_feature_extractor(n_mels, seconds):
    x = make_clip(round(seconds * SAMPLE_RATE), seed=int(seconds * 10))
    ref, ref_frames = reference(x, n_mels)
    # The valid-frame count is ceil(samples / 160), as the reference's attention mask says.
    assert ref_frames == math.ceil(x.size / 160)
    ours = log_mel_spectrogram(x, n_mels)
    F = min(ref_frames + 2, N_FRAMES)  # the valid frames and the two the last conv frame reads
    assert ours.shape == (n_mels, F) and ours.dtype == torch.float32
    assert np.abs(ours.numpy() - ref[:, :F]).max() <= TOL
    (clip,) = prepare_audio(x, n_mels)
    assert torch.equal(clip.features, ours)
    assert clip.num_frames == ref_frames
    assert (clip.start_s, clip.end_s) == (0.0, x.size / SAMPLE_RATE)


@pytest.mark.parametrize("seconds", CLIP_SECONDS)
def test_token_counts_match_qwen2_audio_processor(seconds):
    x = make_clip(round(seconds * SAMPLE_RATE))
    expected = reference_num_tokens(x)
    assert num_audio_tokens(x.size) == expected
    assert [c.num_tokens for c in prepare_audio(x, 128)] == [expected]


def test_num_audio_tokens_table():
    seconds_to_tokens = {1.5: 37, 7.0: 175, 29.9: 747, 30.0: 750, 31.0: 750 + 25, 60.0: 1500}
    for seconds, tokens in seconds_to_tokens.items():
        assert num_audio_tokens(round(seconds * SAMPLE_RATE)) == tokens, seconds
    # Short clips count as padded to MIN_SAMPLES: 7 frames -> 2 tokens.
    assert num_audio_tokens(1) == num_audio_tokens(MIN_SAMPLES) == 2
    with pytest.raises(AudioError, match="zero-length"):
        num_audio_tokens(0)


def test_long_audio_split_windows_match_the_reference_window_by_window():
    x = make_clip(65 * SAMPLE_RATE)
    clips = prepare_audio(x, 80)
    assert [(c.start_s, c.end_s) for c in clips] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert [c.num_tokens for c in clips] == [750, 750, 125]
    assert sum(c.num_tokens for c in clips) == num_audio_tokens(x.size)
    for i, clip in enumerate(clips):
        window = x[i * N_SAMPLES : (i + 1) * N_SAMPLES]
        ref, ref_frames = reference(window, 80)
        F = min(ref_frames + 2, N_FRAMES)
        assert clip.num_frames == ref_frames and clip.features.shape == (80, F)
        assert np.abs(clip.features.numpy() - ref[:, :F]).max() <= TOL


def test_long_audio_split_pads_a_very_short_last_window():
    x = make_clip(N_SAMPLES + 100)
    first, last = prepare_audio(x, 80)
    assert first.num_tokens == 750
    assert (last.num_frames, last.num_tokens) == (7, 2)
    assert (last.start_s, last.end_s) == (30.0, (N_SAMPLES + 100) / SAMPLE_RATE)
    padded = np.pad(x[N_SAMPLES:], (0, MIN_SAMPLES - 100))
    assert torch.equal(last.features, log_mel_spectrogram(padded, 80))


def test_long_audio_truncate_keeps_the_first_window_and_logs(caplog):
    x = make_clip(31 * SAMPLE_RATE)
    with caplog.at_level(logging.WARNING, logger="qwen_audio.audio"):
        clips = prepare_audio(x, 80, long_audio="truncate")
        prepare_audio(x, 80, long_audio="truncate")
    (clip,) = clips
    assert torch.equal(clip.features, log_mel_spectrogram(x[:N_SAMPLES], 80))
    assert (clip.num_tokens, clip.end_s) == (750, 30.0)
    # Logged at most once per process (another test may have triggered it already).
    assert len([r for r in caplog.records if "truncate" in r.getMessage()]) <= 1


def test_long_audio_error_names_duration_and_limit():
    with pytest.raises(AudioError, match=r"31\.00 s.*30 s limit"):
        prepare_audio(make_clip(31 * SAMPLE_RATE), 80, long_audio="error")
    (clip,) = prepare_audio(make_clip(N_SAMPLES), 80, long_audio="error")  # exactly 30 s is fine
    assert clip.num_tokens == 750
    with pytest.raises(AudioError, match="long_audio must be one of"):
        prepare_audio(make_clip(100), 80, long_audio="drop")


@pytest.mark.parametrize("num_samples", [1, 160, 500, 960])
def test_short_clips_are_padded_to_min_samples(num_samples):
    assert MIN_SAMPLES == 961  # the shortest clip the reference accepts (7 frames, 2 tokens)
    x = make_clip(num_samples)
    (clip,) = prepare_audio(x, 128)
    assert (clip.num_frames, clip.num_tokens) == (7, 2)
    assert clip.end_s == num_samples / SAMPLE_RATE  # the window ends where the audio ends
    padded = np.pad(x, (0, MIN_SAMPLES - num_samples))
    ref, ref_frames = reference(padded, 128)
    assert ref_frames == 7 and reference_num_tokens(padded) == 2
    assert np.abs(clip.features.numpy() - ref[:, :9]).max() <= TOL


@pytest.mark.parametrize("num_samples", [961, 1000, 1600])
def test_clips_the_reference_accepts_are_not_padded(num_samples):
    x = make_clip(num_samples)
    (clip,) = prepare_audio(x, 128)
    assert clip.num_frames == math.ceil(num_samples / 160)
    assert clip.num_tokens == reference_num_tokens(x)
    ref, _ = reference(x, 128)
    F = clip.num_frames + 2
    assert np.abs(clip.features.numpy() - ref[:, :F]).max() <= TOL


def test_prepare_audio_rejects_bad_samples():
    with pytest.raises(AudioError, match="zero-length"):
        prepare_audio(np.zeros(0, np.float32), 80)
    bad = make_clip(1600)
    bad[7] = np.inf
    with pytest.raises(AudioError, match="NaN/inf"):
        prepare_audio(bad, 80)
    with pytest.raises(AudioError, match="1-D"):
        prepare_audio(np.zeros((2, 1600), np.float32), 80)
    with pytest.raises(AudioError, match="numpy array"):
        prepare_audio([0.0] * 1600, 80)
    with pytest.raises(AudioError, match="at most 480000 samples"):
        log_mel_spectrogram(make_clip(N_SAMPLES + 1), 80)


def test_audio_content_hash():
    x = make_clip(16000)
    key = audio_content_hash(x)
    assert isinstance(key, bytes) and len(key) == 32
    assert audio_content_hash(x.copy()) == key
    assert audio_content_hash(x.astype(np.float64)) == key  # keyed on the float32 samples
    assert audio_content_hash(np.append(x, np.float32(0))) != key  # trailing silence counts
    y = x.copy()
    y[-1] += 1e-3
    assert audio_content_hash(y) != key


def test_audio_clip_is_frozen():
    (clip,) = prepare_audio(make_clip(1600), 80)
    assert isinstance(clip, AudioClip)
    with pytest.raises(AttributeError):
        clip.num_tokens = 3


# ----------------------------------------------------------------------------- arrays


def test_load_array_mixes_channels_by_averaging_on_either_axis():
    left, right = make_clip(16000, seed=1), make_clip(16000, seed=2)
    mono = (left + right) / 2
    np.testing.assert_allclose(load_audio(np.stack([left, right]), 16000), mono, atol=1e-7)
    np.testing.assert_allclose(load_audio(np.stack([left, right], axis=1), 16000), mono, atol=1e-7)
    assert load_audio(left, 16000).dtype == np.float32
    np.testing.assert_array_equal(load_audio(torch.from_numpy(left), 16000), left)
    half = torch.from_numpy(left).to(torch.bfloat16)
    np.testing.assert_array_equal(load_audio(half, 16000), half.float().numpy())


def test_load_array_resamples_with_soxr_and_scales_integer_pcm():
    x = make_clip(44100)
    expected = soxr.resample(x, 44100, SAMPLE_RATE, quality="HQ")
    np.testing.assert_array_equal(load_audio(x, 44100), expected)
    assert load_audio(x.astype(np.float64), 44100).size == SAMPLE_RATE
    pcm = (x * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm, 16000), pcm / 32768.0, atol=1e-7)


def test_load_array_errors():
    with pytest.raises(AudioError, match="sampling_rate is required"):
        load_audio(make_clip(100))
    with pytest.raises(AudioError, match="zero-length"):
        load_audio(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="zero-length"):
        load_audio(np.zeros((2, 0), np.float32), 16000)
    with pytest.raises(AudioError, match="1 NaN/inf sample.*sample 5"):
        load_audio(np.where(np.arange(100) == 5, np.nan, 0.0), 16000)
    stereo = np.zeros((2, 100), np.float32)
    stereo[1, 42] = np.inf
    with pytest.raises(AudioError, match="1 NaN/inf sample.*sample 42"):
        load_audio(stereo, 16000)
    with pytest.raises(AudioError, match="1-D or 2-D"):
        load_audio(np.zeros((2, 2, 100), np.float32), 16000)
    with pytest.raises(AudioError, match="no channel axis"):
        load_audio(np.zeros((100, 100), np.float32), 16000)
    with pytest.raises(AudioError, match="too short to resample from 44100 Hz"):
        load_audio(np.ones(1, np.float32), 44100)
    with pytest.raises(AudioError, match="must be positive"):
        load_audio(make_clip(100), 0)
    with pytest.raises(AudioError, match="dtype"):
        load_audio(np.array(["a", "b"]), 16000)


def test_load_rejects_wrong_types():
    for source in (123, None, [0.0, 0.1], {"audio": "x.wav"}):
        with pytest.raises(AudioError, match="unsupported audio source of type"):
            load_audio(source)
    assert issubclass(AudioError, ValueError)


# ----------------------------------------------------------------------------- files

ENCODINGS = {  # file name -> ffmpeg output options
    "speech.flac": [],
    "speech.ogg": ["-c:a", "libopus", "-b:a", "32k"],
    "speech.mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "speech.m4a": ["-c:a", "aac", "-b:a", "64k"],
    "speech_8k.wav": ["-ar", "8000"],
    "speech_44k.wav": ["-ar", "44100"],
    "speech_stereo.wav": ["-af", "pan=stereo|c0=c0|c1=c0"],  # both channels = the mono signal
}
LOSSY = ["speech.ogg", "speech.mp3", "speech.m4a", "speech.webm", "speech_8k.wav"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """espeak-ng speech (22.05 kHz mono wav) converted by ffmpeg into every supported format."""
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng ffmpeg)")
    d = tmp_path_factory.mktemp("speech")
    text = "The quick brown fox jumps over the lazy dog. Qwen two audio listens to this sentence."
    subprocess.run(["espeak-ng", "-w", str(d / "speech.wav"), text], check=True)
    ffmpeg = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", str(d / "speech.wav")]
    for name, options in ENCODINGS.items():
        subprocess.run([*ffmpeg, *options, str(d / name)], check=True)
    # Written to a pipe, as a browser's MediaRecorder streams it: no duration in the header.
    webm = subprocess.run(
        [*ffmpeg, "-c:a", "libopus", "-b:a", "32k", "-f", "webm", "pipe:1"],
        check=True,
        capture_output=True,
    ).stdout
    (d / "speech.webm").write_bytes(webm)
    return d


def best_alignment(ref: np.ndarray, x: np.ndarray, max_lag: int = 320) -> tuple[float, int]:
    """(normalised cross-correlation, lag) of x against ref, best over |lag| <= max_lag samples."""
    n = min(ref.size, x.size)
    a, b = ref[:n].astype(np.float64), x[:n].astype(np.float64)
    size = 1 << (2 * n).bit_length()
    cc = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.r_[np.arange(0, max_lag + 1), np.arange(-max_lag, 0)]
    values = cc[lags % size] / (np.linalg.norm(a) * np.linalg.norm(b))
    i = int(np.argmax(values))
    return float(values[i]), int(lags[i])


def test_webm_fixture_has_no_duration_in_header(speech):
    with av.open(str(speech / "speech.webm")) as container:
        assert container.duration is None
        assert container.streams.audio[0].codec_context.name == "opus"


@pytest.mark.parametrize("name", ["speech.flac", "speech_44k.wav", "speech_stereo.wav"])
def test_lossless_formats_give_identical_features(speech, name):
    ref = load_audio(speech / "speech.wav")
    assert ref.dtype == np.float32 and ref.ndim == 1
    assert ref.size == round(sf.info(str(speech / "speech.wav")).duration * SAMPLE_RATE)
    x = load_audio(speech / name)
    if name == "speech_44k.wav":  # resampled twice (ffmpeg up, soxr down): equal, not identical
        assert x.size == ref.size and np.abs(x - ref).max() < 1e-3
        return
    np.testing.assert_array_equal(x, ref)
    (a,), (b,) = prepare_audio(ref, 128), prepare_audio(x, 128)
    assert torch.equal(a.features, b.features)


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_formats_load_to_the_right_duration(speech, name):
    ref = load_audio(speech / "speech.wav")
    x = load_audio(speech / name)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size - ref.size) <= 0.02 * SAMPLE_RATE  # within 20 ms (codec frame padding)
    corr, lag = best_alignment(ref, x)
    assert corr > 0.95 and abs(lag) <= 160, (corr, lag)  # the same speech, within 10 ms


def test_every_source_kind_gives_the_same_samples(speech):
    path = speech / "speech.flac"
    expected = load_audio(path)
    data = path.read_bytes()
    data_url = "data:audio/flac;base64," + base64.b64encode(data).decode()
    sources = [str(path), data, bytearray(data), io.BytesIO(data), data_url, path.as_uri()]
    for source in sources:
        np.testing.assert_array_equal(load_audio(source), expected)
    with path.open("rb") as f:
        np.testing.assert_array_equal(load_audio(f), expected)
    webm = (speech / "speech.webm").read_bytes()  # PyAV path from bytes
    assert load_audio(webm).size == load_audio(speech / "speech.webm").size


def test_sampling_rate_must_agree_with_the_file(speech):
    assert load_audio(speech / "speech.wav", 22050).size > 0
    with pytest.raises(AudioError, match="disagrees with the file's rate of 22050 Hz"):
        load_audio(speech / "speech.wav", 16000)


# ----------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=f"audio file not found: {path}"):
        load_audio(path)
    with pytest.raises(AudioError, match="not found"):
        load_audio(path.as_uri())
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)
    with pytest.raises(AudioError, match="audio path is empty"):
        load_audio("")


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty.wav: empty audio \(0 bytes\)"):
        load_audio(path)
    with pytest.raises(AudioError, match="audio bytes: empty"):
        load_audio(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(io.BytesIO())


def test_unsupported_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("These are meeting notes, not audio.\n" * 20)
    with pytest.raises(AudioError, match=r"notes.txt: unsupported audio format \(the data looks"):
        load_audio(path)
    with pytest.raises(AudioError, match="text mode"):
        with path.open("r") as f:
            load_audio(f)


def test_corrupt_data(tmp_path, speech):
    with pytest.raises(AudioError, match="audio bytes: unsupported audio format"):
        load_audio(np.random.default_rng(0).bytes(4000))
    truncated = (speech / "speech.m4a").read_bytes()[:200]  # ftyp box, no media data
    with pytest.raises(AudioError, match="cannot decode mp4/m4a audio, the data is corrupt"):
        load_audio(truncated)
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(200))
    with pytest.raises(AudioError, match="broken.wav: cannot decode wav audio"):
        load_audio(path)
    with pytest.raises(AudioError, match="invalid base64"):
        load_audio("data:audio/wav;base64,@@@@")


def test_nan_and_zero_length_files(tmp_path):
    x = make_clip(1600)
    x[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: 1 NaN/inf sample"):
        load_audio(path)
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="silent.wav: zero-length audio"):
        load_audio(path)


def test_max_bytes(speech):
    path = speech / "speech.flac"
    limit = path.stat().st_size - 1
    for source in (path, path.read_bytes(), io.BytesIO(path.read_bytes())):
        with pytest.raises(AudioError, match=f"larger than the limit of {limit} bytes"):
            load_audio(source, max_bytes=limit)
    assert load_audio(path, max_bytes=limit + 1).size > 0


# ----------------------------------------------------------------------------- URLs


@pytest.fixture
def http_server(speech):
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/redirect?"):  # /redirect?<target URL>
                self.send_response(302)
                self.send_header("Location", self.path.split("?", 1)[1])
                self.end_headers()
                return
            super().do_GET()

    handler = functools.partial(QuietHandler, directory=str(speech))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_urls_need_opt_in():
    with pytest.raises(AudioError, match="remote audio is disabled.*allow_remote=True"):
        load_audio("https://example.com/a.wav")
    with pytest.raises(AudioError, match="unsupported URL scheme 'ftp'"):
        load_audio("ftp://example.com/a.wav", allow_remote=True)


def test_remote_url_with_opt_in(http_server, speech):
    url = f"{http_server}/speech.mp3"
    np.testing.assert_array_equal(
        load_audio(url, allow_remote=True), load_audio(speech / "speech.mp3")
    )
    with pytest.raises(AudioError, match="HTTP error 404"):
        load_audio(f"{http_server}/missing.wav", allow_remote=True)
    with pytest.raises(AudioError, match="larger than the limit of 100 bytes"):
        load_audio(url, allow_remote=True, max_bytes=100)


def test_remote_redirects_stay_on_http(http_server, speech):
    url = f"{http_server}/redirect?{http_server}/speech.flac"
    np.testing.assert_array_equal(
        load_audio(url, allow_remote=True), load_audio(speech / "speech.flac")
    )
    for target in ("ftp://127.0.0.1/speech.flac", (speech / "speech.flac").as_uri()):
        with pytest.raises(AudioError, match="(?i)redirect"):
            load_audio(f"{http_server}/redirect?{target}", allow_remote=True)
