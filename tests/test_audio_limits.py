"""What loading one audio may cost (issue 16): `AudioLimits` checked from the container's header
before decoding, for libsndfile's formats and FFmpeg's, and counted again while decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr

from qwen_audio.audio_io import SAMPLE_RATE, AudioError, AudioLimitError, AudioLimits, load_audio
from qwen_audio.bench import hostile_audio as hostile

SERVER = AudioLimits(max_seconds=1200, max_samples=115_200_000)  # the server's defaults


def refused(data, limits: AudioLimits, limit: str) -> AudioLimitError:
    with pytest.raises(AudioLimitError) as info:
        load_audio(data, limits=limits)
    assert info.value.limit == limit, info.value
    return info.value


def test_a_1_hz_mat4_file_is_refused_from_its_header():
    # libsndfile reads MAT4 (FFmpeg cannot); at 1 Hz, 16 kHz output would be 16,000x the samples
    data = hostile.mat4_at_1_hz()
    assert len(data) < 70_000
    err = refused(data, SERVER, "sample_rate")
    assert "1 Hz" in str(err) and "4,000-384,000 Hz" in str(err)
    refused(data, AudioLimits(), "sample_rate")  # the library's defaults refuse it too
    array = np.zeros(100, np.float32)
    with pytest.raises(AudioLimitError, match="1 Hz"):
        load_audio(array, 1)
    assert load_audio(hostile.mat4_at_1_hz(10), limits=AudioLimits(min_rate=1)).size == 160_000


def test_channels_times_frames_are_bounded_not_just_seconds():
    # 8 channels x 96 kHz: 60 s is within 1200 s but holds 46 M samples
    data = hostile.silent_flac(60, channels=8, rate=96_000)
    err = refused(data, AudioLimits(max_seconds=1200, max_samples=20_000_000), "max_samples")
    assert "8 x 5,760,000 = 46,080,000 samples" in str(err) and "20,000,000" in str(err)
    assert load_audio(hostile.silent_flac(2, channels=8, rate=96_000), limits=SERVER).size == 32_000


def test_seconds_from_the_header():
    data = hostile.silent_flac(30, channels=1, rate=16_000)
    err = refused(data, AudioLimits(max_seconds=20), "max_seconds")
    assert "30.0 s long; the limit is 20 s" in str(err)


def test_a_header_without_a_duration_is_counted_while_decoding():
    data = hostile.opus_webm(30)  # WebM as browsers stream it: no duration in the header
    err = refused(data, AudioLimits(max_seconds=10), "max_seconds")
    assert "over 10 s long" in str(err)  # stopped at the limit, not decoded to the end
    refused(data, AudioLimits(max_samples=48_000 * 5), "max_samples")
    assert load_audio(data, limits=AudioLimits(max_seconds=31)).size == pytest.approx(
        30 * SAMPLE_RATE, abs=SAMPLE_RATE // 10
    )


def test_lying_wav_headers():
    # sizes that claim 37 hours: what is read is what the file holds
    samples = load_audio(hostile.wav_claiming_size(2.0), limits=SERVER)
    assert samples.size == 2 * SAMPLE_RATE
    # a rate field that says 1 Hz or 100 MHz is refused before anything is decoded
    refused(hostile.wav_claiming_rate(1.0, 1), SERVER, "sample_rate")
    refused(hostile.wav_claiming_rate(1.0, 100_000_000), SERVER, "sample_rate")


def test_too_many_channels():
    buf = io.BytesIO()
    sf.write(buf, np.zeros((1000, 40), np.float32), 16_000, format="WAV", subtype="PCM_16")
    err = refused(buf.getvalue(), SERVER, "max_channels")
    assert "40 channels" in str(err)


def test_block_wise_decoding_gives_the_samples_of_a_whole_file_decode():
    # several blocks of 3 channels at 44.1 kHz: mixed and resampled block by block, equal to
    # mixing and resampling the whole signal at once (soxr's stream is exact)
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal((44_100 * 4, 3))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 44_100, format="WAV", subtype="FLOAT")
    expected = soxr.resample(x.T.mean(axis=0, dtype=np.float32), 44_100, SAMPLE_RATE, "HQ")
    np.testing.assert_array_equal(load_audio(buf.getvalue(), limits=SERVER), expected)


def test_a_nan_in_a_later_block_names_its_sample():
    x = np.zeros(200_000, np.float32)
    x[150_000] = np.nan
    buf = io.BytesIO()
    sf.write(buf, x, 16_000, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError, match="1 NaN/inf sample.*sample 150000"):
        load_audio(buf.getvalue())


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    return hostile.clean_corpus()


def test_the_corpus_covers_both_decoders_and_loads(corpus):
    assert sum(name.startswith("sf-") for name in corpus) == len(hostile.SOUNDFILE_CONTAINERS)
    assert sum(name.startswith("av-") for name in corpus) >= 8
    for name, data in corpus.items():
        samples = load_audio(data, limits=SERVER)
        if name != "sf-xi-dpcm_16":  # XI stores no sample rate: libsndfile says 44.1 kHz
            assert abs(samples.size - SAMPLE_RATE // 2) < SAMPLE_RATE // 10, name


@pytest.mark.timeout(120)  # a hang fails
# libsndfile seeks to -1 in some damaged files; soundfile's seek callback then raises inside cffi,
# which reports it as unraisable and goes on (the read fails and ends as an AudioError)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_files_give_audio_errors_only(corpus):
    outcomes = {"loaded": 0, "refused": 0}
    for i, (name, data) in enumerate(corpus.items()):
        for damage, broken in hostile.mutations(data, seed=i).items():
            try:
                samples = load_audio(broken, limits=SERVER)
            except AudioError:  # AudioLimitError included; any other exception fails the test
                outcomes["refused"] += 1
                continue
            outcomes["loaded"] += 1
            assert samples.dtype == np.float32 and samples.ndim == 1, (name, damage)
            assert samples.size <= 1200 * SAMPLE_RATE and np.isfinite(samples).all()
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 50, outcomes
