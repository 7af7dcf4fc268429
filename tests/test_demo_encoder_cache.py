"""`qwen-audio finetune --cache-encoder` (added for the demo model's recipe): a frozen encoder's
output is kept per clip, so each clip is encoded once, and the training forward is unchanged."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from qwen_audio.llm import load_checkpoint
from qwen_audio.train.batching import pack
from qwen_audio.train.forward import EncoderCache, token_logprobs
from qwen_audio.train.trainer import Trainer, TrainOptions
from tests.conftest import noise_clip


def _conversation(audio: str, question: str, answer: str) -> list[dict]:
    user = [{"type": "audio", "audio": audio}, {"type": "text", "text": question}]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_cached_encoder_gives_the_same_logprobs_and_encodes_each_clip_once(
    checkpoints, tmp_path, monkeypatch
):
    ckpt = load_checkpoint(checkpoints("gqa1"), dtype="float32")
    model, renderer = ckpt.model, ckpt.renderer
    clips = []
    for i, seconds in enumerate((1.0, 1.7)):
        clips.append(str(tmp_path / f"c{i}.wav"))
        sf.write(clips[-1], noise_clip(seconds, seed=i), 16000)
    rows = [
        _conversation(clips[0], "What is it?", "a tone"),
        _conversation(clips[1], "Describe it.", "noise and a tone"),
        _conversation(clips[0], "Again?", "yes"),  # same clip: one entry in the cache
    ]
    batch = pack(
        [renderer.render_chat(m, add_generation_prompt=False, with_loss_mask=True) for m in rows]
    )
    assert len(batch.clip_keys) == len(batch.features) == 2

    calls = []
    tower_forward = model.audio_tower.forward
    monkeypatch.setattr(
        model.audio_tower, "forward", lambda f, n: calls.append(len(f)) or tower_forward(f, n)
    )
    with torch.no_grad():
        ref = token_logprobs(model, batch)
        cache = EncoderCache()
        first = token_logprobs(model, batch, cache)
        second = token_logprobs(model, batch, cache)
    assert calls == [2, 2]  # the uncached forward, then the cache's only encoder call
    assert len(cache) == 2
    torch.testing.assert_close(first, ref, rtol=0, atol=0)
    torch.testing.assert_close(second, ref, rtol=0, atol=0)

    # The projector after the cache still gets gradients.
    model.multi_modal_projector.linear.weight.requires_grad_(True)
    token_logprobs(model, batch, cache).sum().backward()
    assert model.multi_modal_projector.linear.weight.grad.abs().sum() > 0


def test_cache_encoder_refuses_a_trained_encoder(checkpoints, tmp_path):
    opts = TrainOptions(
        model=checkpoints("gqa1"),
        data=tmp_path / "unused.jsonl",
        output=tmp_path / "out",
        full=True,
        train_encoder=True,
        cache_encoder=True,
    )
    trainer = Trainer.__new__(Trainer)  # only the model preparation is under test
    trainer.opts, trainer.model = opts, load_checkpoint(opts.model, dtype="float32").model
    with pytest.raises(ValueError, match="frozen audio encoder"):
        trainer._prepare_model()
