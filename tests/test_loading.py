"""Checkpoint folders in every layout users have, and clear errors for broken ones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qwen_audio import LLM, SamplingParams
from qwen_audio.config import CheckpointError, ModelConfig
from qwen_audio.model.loader import resolve_model_path
from tests.conftest import noise_clip
from tests.fixtures.checkpoints import build_checkpoint

CONV = [{"role": "user", "content": [{"type": "audio", "audio": (noise_clip(1.5), 16000)}]}]
PARAMS = SamplingParams(temperature=0, max_tokens=6)


@pytest.fixture(scope="module")
def reference_tokens(checkpoints):
    return LLM(checkpoints("gqa1"), dtype="float32").chat(CONV, PARAMS)[0].token_ids


@pytest.mark.parametrize(
    "variant",
    [
        {"style": "v5"},
        {"shards": 3},
        {"with_tokenizer_json": False},
        {"chat_template": "chat_template.jinja"},
        {"chat_template": "tokenizer_config.json"},
        {"chat_template": "none"},  # the built-in Qwen2-Audio template
    ],
)
def test_layouts_give_identical_answers(tmp_path, reference_tokens, variant):
    path = build_checkpoint(tmp_path / "ck", "gqa1", **variant)
    assert LLM(path, dtype="float32").chat(CONV, PARAMS)[0].token_ids == reference_tokens


def test_v4_and_v5_configs_read_the_same(tmp_path):
    v4 = ModelConfig.from_dir(build_checkpoint(tmp_path / "a", "gqa1", style="v4"))
    v5 = ModelConfig.from_dir(build_checkpoint(tmp_path / "b", "gqa1", style="v5"))
    assert v4 == v5 and v4.text.rope_theta == 1000000.0


def test_missing_fields_take_qwen2_defaults():
    cfg = ModelConfig.from_dict({"text_config": {"vocab_size": 156032}, "audio_config": {}})
    assert cfg.text.hidden_size == 4096 and cfg.text.num_key_value_heads == 32
    assert cfg.text.rope_theta == 10000.0 and cfg.audio.num_mel_bins == 128
    assert cfg.audio_token_index == 151646


def test_hub_id_resolves_from_an_offline_cache(tmp_path, monkeypatch, checkpoints):
    src = checkpoints("mha")
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2-Audio-7B-Instruct" / "snapshots" / "abc123"
    shutil.copytree(src, snapshot)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("Qwen/Qwen2-Audio-7B-Instruct") == snapshot
    llm = LLM("Qwen/Qwen2-Audio-7B-Instruct", dtype="float32")
    assert llm.chat(CONV, PARAMS)[0].finish_reason in ("stop", "length")
    with pytest.raises(CheckpointError, match="cache"):
        resolve_model_path("Qwen/Not-There")


def test_modelscope_cache_is_an_option(tmp_path, monkeypatch, checkpoints):
    target = tmp_path / "ms" / "models" / "qwen" / "Qwen2-Audio-7B"
    shutil.copytree(checkpoints("mha"), target)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("qwen/Qwen2-Audio-7B") == target


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda p: (p / "config.json").unlink(), "config.json"),
        (lambda p: (p / "config.json").write_text("{not json"), "config.json"),
        (lambda p: (p / "model.safetensors").unlink(), "no weights"),
        (lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "model.safetensors"),
        (lambda p: (p / "tokenizer.json").unlink() or (p / "vocab.json").unlink(), "vocab.json"),
        (
            lambda p: (p / "config.json").write_text(
                json.dumps(
                    {
                        **json.loads((p / "config.json").read_text()),
                        "text_config": {"hidden_size": 32},
                    }
                )
            ),
            "shape",
        ),
    ],
)
def test_broken_checkpoints_name_the_file(tmp_path, checkpoints, breakage, message):
    path = tmp_path / "ck"
    shutil.copytree(checkpoints("mha"), path)
    breakage(path)
    with pytest.raises((CheckpointError, ValueError), match=message):
        LLM(path, dtype="float32")


def test_missing_shard_is_named(tmp_path):
    path = build_checkpoint(tmp_path / "ck", "mha", shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002"):
        LLM(path, dtype="float32")


def test_dtypes_and_weights_are_memory_mapped(checkpoints):
    path = checkpoints("mha")
    for name, dtype in [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
    ]:
        llm = LLM(path, dtype=name)
        # the weights take the dtype asked for; activations run in float32 unless bf16 is native
        assert llm.model.language_model.model.embed_tokens.weight.dtype == dtype
        assert llm.model.language_model.lm_head.weight.dtype == dtype
        assert llm.model.dtype == llm.checkpoint.precision.compute
        assert llm.chat(CONV, PARAMS)[0].finish_reason in ("stop", "length")
    with pytest.raises(ValueError, match="dtype"):
        LLM(path, dtype="int4")
    # float32 on disk, float32 in memory: the parameters are views of the mapped file, not copies
    llm = LLM(path, dtype="float32")
    w = llm.model.language_model.model.embed_tokens.weight
    assert not w.untyped_storage().resizable()  # mmap-backed storages cannot be resized


def test_cuda_request_without_a_gpu_is_a_clear_error(checkpoints):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA"):
        LLM(checkpoints("mha"), device="cuda")


def test_loading_and_the_engine_import_nothing_from_train():
    """Inference merges adapters with model/peft_adapter.py: train/ (peft, accelerate) stays
    out of a process that only runs the model."""
    import subprocess
    import sys

    code = (
        "import sys, torch, qwen_audio.llm, qwen_audio.loading, qwen_audio.async_llm\n"
        "from qwen_audio.model.peft_adapter import AdapterError\n"
        "try:\n"
        "    qwen_audio.loading._merge(torch.nn.Linear(2, 2), '/nonexistent-adapter')\n"
        "except AdapterError:\n"
        "    pass\n"
        "bad = sorted(m for m in sys.modules if m.startswith('qwen_audio.train'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
