"""LoRA and full finetuning end to end on tiny random checkpoints and espeak-ng speech."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen_audio import LLM, SamplingParams
from qwen_audio.train.lora import LoRAOptions
from qwen_audio.train.trainer import TrainOptions, finetune
from tests.fixtures.checkpoints import load_reference
from tests.test_train_utils import (  # noqa: F401
    ASR_PROMPT,
    TRANSCRIPTS,
    asr_rows,
    one_thread,
    speak,
    write_jsonl,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def asr_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("asr")
    clips = speak(folder)
    return write_jsonl(folder / "train.jsonl", asr_rows(clips)), clips


def options(base: Path, data: Path, out: Path, **kw) -> TrainOptions:
    kw.setdefault("lora", LoRAOptions(r=8, alpha=16.0, dropout=0.0))
    kw.setdefault("tensorboard", False)
    return TrainOptions(model=base, data=data, output=out, progress=False, **kw)


@pytest.mark.slow
def test_lora_learns_to_transcribe_its_training_clips(checkpoints, asr_data, tmp_path):
    """60 steps of LoRA on 4 clips: the loss falls from ~9 to ~0 and greedy decoding with the
    adapter (loaded by `LLM(base, adapter=...)`) reproduces every transcript."""
    base = checkpoints("mha")
    data, clips = asr_data
    out = tmp_path / "run"
    result = finetune(
        options(
            base, data, out, max_steps=60, lr=1e-2, batch_size=4, warmup_steps=5, tensorboard=True
        )
    )
    first, last = result.losses[0], result.losses[-1]
    print(f"ASR LoRA loss: step 1 {first:.3f}, step 60 {last:.5f}")
    assert first > 5.0 and last < 0.05
    assert (out / "logs" / "loss.png").stat().st_size > 1000
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert len((out / "logs" / "train.csv").read_text().splitlines()) == 61

    before = LLM(base, dtype="float32")
    llm = LLM(base, dtype="float32", adapter=out)
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>" + ASR_PROMPT
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    audios = [[str(c)] for c in clips]
    texts = [o.text for o in llm.generate([prompt] * 4, greedy, audios=audios)]
    assert texts == TRANSCRIPTS
    assert [o.text for o in before.generate([prompt] * 4, greedy, audios=audios)] != TRANSCRIPTS


def test_lora_options_choose_what_is_trained(checkpoints, asr_data, tmp_path):
    base = checkpoints("gqa1")
    data, _ = asr_data
    lora = LoRAOptions(r=4, alpha=8.0, dropout=0.0, encoder=True)
    finetune(
        options(base, data, tmp_path, max_steps=2, batch_size=2, lora=lora, train_projector=True)
    )
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert config["modules_to_save"] == ["multi_modal_projector"]
    assert r"model\.audio_tower\.layers" in config["target_modules"]
    prefix = "base_model.model."
    assert f"{prefix}model.multi_modal_projector.linear.weight" in keys
    assert f"{prefix}model.audio_tower.layers.0.fc1.lora_A.weight" in keys
    assert f"{prefix}model.language_model.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert not any("lm_head" in k or "embed_tokens" in k for k in keys)


def test_gradient_checkpointing_changes_nothing_and_bf16_stays_close(
    checkpoints, asr_data, tmp_path
):
    base = checkpoints("mha")
    data, _ = asr_data
    runs = {}
    for name, kw in {
        "plain": {},
        "checkpointed": {"gradient_checkpointing": True},
        "bf16": {"bf16": True},
    }.items():
        out = tmp_path / name
        runs[name] = finetune(options(base, data, out, max_steps=3, batch_size=2, lr=1e-2, **kw))
        runs[name].weights = load_file(str(out / "adapter_model.safetensors"))
    plain, ckpt, bf16 = runs["plain"], runs["checkpointed"], runs["bf16"]
    assert plain.losses == ckpt.losses
    for k, v in plain.weights.items():
        torch.testing.assert_close(ckpt.weights[k], v, rtol=1e-6, atol=1e-7)
    # bf16 keeps about 3 significant digits: the first loss (same weights) agrees to 2%
    assert bf16.losses[0] == pytest.approx(plain.losses[0], rel=0.02)
    assert all(torch.isfinite(torch.tensor(bf16.losses)))


def test_full_finetuning_writes_a_checkpoint_both_loaders_read(checkpoints, asr_data, tmp_path):
    base = checkpoints("gqa3")
    data, clips = asr_data
    out = tmp_path / "full"
    result = finetune(options(base, data, out, full=True, max_steps=6, batch_size=4, lr=1e-3))
    assert result.losses[-1] < result.losses[0]
    for name in ("config.json", "tokenizer_config.json", "chat_template.json", "model.safetensors"):
        assert (out / name).exists()

    ours = LLM(out, dtype="float32")
    ref, processor = load_reference(out)
    from qwen_audio.audio import load_audio

    samples = load_audio(str(clips[0]))
    text = "<|audio_bos|><|AUDIO|><|audio_eos|>" + ASR_PROMPT
    inputs = processor(text=text, audio=[samples], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        want = ref(**inputs).logits[0]
    got = our_logits(ours, text, samples)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def our_logits(llm: LLM, text: str, samples) -> torch.Tensor:
    """All-position logits of a raw prompt with one audio, through our training forward."""
    from qwen_audio.model.attention import AttentionBatch

    prompt = llm.renderer.render_raw(text, [samples])
    model = llm.model
    with torch.no_grad():
        clips = model.encode_audio(
            [c.features for c in prompt.audio_clips], [c.num_frames for c in prompt.audio_clips]
        )
        ids = torch.tensor(prompt.token_ids)
        hidden = model(
            ids, torch.arange(len(ids)), AttentionBatch.single(len(ids)), torch.cat(clips)
        )
        return model.logits(hidden)


def test_top_encoder_layers_train_with_the_rest_of_the_encoder_cached(
    checkpoints, asr_data, tmp_path
):
    """`--train-encoder-layers 1 --cache-encoder`: the same losses as without the cache, and the
    exported checkpoint changes the top encoder layer and norm but none of the layers below."""
    base = checkpoints("gqa1")
    data, _ = asr_data
    kw = dict(full=True, train_encoder_layers=1, max_steps=3, batch_size=2, lr=1e-3)
    cached = finetune(options(base, data, tmp_path / "cached", cache_encoder=True, **kw))
    plain = finetune(options(base, data, tmp_path / "plain", **kw))
    assert cached.losses == pytest.approx(plain.losses, rel=1e-4)

    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(tmp_path / "cached" / "model.safetensors"))
    top = max(int(k.split(".")[2]) for k in after if k.startswith("audio_tower.layers."))
    for key, value in after.items():
        if not key.startswith("audio_tower."):
            continue
        trained = key.startswith((f"audio_tower.layers.{top}.", "audio_tower.layer_norm."))
        assert torch.equal(value, before[key]) != trained, key
