"""`qwen-audio finetune --cache-encoder` (added for the demo model's recipe): a frozen encoder's
output is kept per clip, so each clip is encoded once, and the training forward is unchanged.
With `--train-encoder-layers N` the cache keeps the states entering the top N (trained) layers."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from qwen_audio.llm import load_checkpoint
from qwen_audio.model.encoder import (
    FrameLayout,
    conv_frames,
    grid_attention,
    per_clip_attention,
)
from qwen_audio.train.batching import pack
from qwen_audio.train.forward import EncoderCache, token_logprobs
from qwen_audio.train.lora import TrainableParts, set_trainable
from qwen_audio.train.trainer import Trainer, TrainOptions
from tests.conftest import noise_clip


def _conversation(audio: str, question: str, answer: str) -> list[dict]:
    user = [{"type": "audio", "audio": audio}, {"type": "text", "text": question}]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _batch(renderer, tmp_path):
    """Three rows on two clips of different lengths (the first clip is used twice)."""
    clips = []
    for i, seconds in enumerate((1.0, 1.7)):
        clips.append(str(tmp_path / f"c{i}.wav"))
        sf.write(clips[-1], noise_clip(seconds, seed=i), 16000)
    rows = [
        _conversation(clips[0], "What is it?", "a tone"),
        _conversation(clips[1], "Describe it.", "noise and a tone"),
        _conversation(clips[0], "Again?", "yes"),  # same clip: one entry in the cache
    ]
    return pack(
        [renderer.render_chat(m, add_generation_prompt=False, with_loss_mask=True) for m in rows]
    )


def test_cached_encoder_gives_the_same_logprobs_and_encodes_each_clip_once(
    checkpoints, tmp_path, monkeypatch
):
    ckpt = load_checkpoint(checkpoints("gqa1"), dtype="float32")
    model, renderer = ckpt.model, ckpt.renderer
    batch = _batch(renderer, tmp_path)
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


def test_the_encoder_split_at_any_layer_gives_the_forward(checkpoints, tmp_path):
    tower = load_checkpoint(checkpoints("gqa1"), dtype="float32").model.audio_tower
    batch = _batch(load_checkpoint(checkpoints("gqa1")).renderer, tmp_path)
    features, frames = batch.features, batch.num_frames
    with torch.no_grad():
        want = tower(features, frames)
        for k in range(len(tower.layers) + 1):
            states = tower.frame_states(features, frames, k)
            assert [s.shape[0] for s in states] == [(n - 1) // 2 + 1 for n in frames]
            got = tower.from_frame_states(states, frames, k)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


def test_cache_with_trained_top_layers_gives_the_same_logprobs_and_gradients(
    checkpoints, tmp_path, monkeypatch
):
    model = load_checkpoint(checkpoints("gqa1"), dtype="float32").model
    batch = _batch(load_checkpoint(checkpoints("gqa1")).renderer, tmp_path)
    depth = len(model.audio_tower.layers)
    parts = TrainableParts(projector=True, encoder_top_layers=1)
    assert parts.full_modules(model) == [
        "multi_modal_projector",
        f"audio_tower.layers.{depth - 1}",
        "audio_tower.layer_norm",
    ]
    set_trainable(model, parts)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith(tuple(parts.full_modules(model))) for n in trained)

    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    ref = token_logprobs(model, batch)  # the encoder runs whole, gradients reach its top layer
    ref.sum().backward()
    want = grads()
    assert set(want) == set(trained)

    calls = []
    frame_states = model.audio_tower.frame_states
    monkeypatch.setattr(
        model.audio_tower,
        "frame_states",
        lambda f, n, k: calls.append((len(f), k)) or frame_states(f, n, k),
    )
    cache = EncoderCache(trained_top_layers=1)
    for _ in range(2):
        got = token_logprobs(model, batch, cache)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        got.sum().backward()
        for name, grad in grads().items():  # float32 rounding: compare as a whole
            assert (grad - want[name]).norm() <= 1e-4 * want[name].norm(), name
    assert calls == [(2, depth - 1)]  # the frozen layers ran once per clip


def test_top_layer_count_is_checked(checkpoints):
    model = load_checkpoint(checkpoints("gqa1"), dtype="float32").model
    depth = len(model.audio_tower.layers)
    with pytest.raises(ValueError, match=f"has {depth} layers"):
        TrainableParts(encoder_top_layers=depth + 1).full_modules(model)


def test_training_attention_on_cpu_equals_the_fused_kernel(checkpoints, tmp_path):
    """When the encoder's attention is differentiated on CPU it runs clip by clip with matmuls;
    otherwise the fused kernel on a padded grid. Same outputs, same gradients."""
    model = load_checkpoint(checkpoints("gqa1"), dtype="float32").model
    tower = model.audio_tower
    batch = _batch(load_checkpoint(checkpoints("gqa1")).renderer, tmp_path)
    with torch.no_grad():
        frames = torch.cat(tower.frame_states(batch.features, batch.num_frames, 0))
    layout = FrameLayout.of([conv_frames(n) for n in batch.num_frames], frames.device)
    heads = tower.layers[0].self_attn.num_heads
    torch.manual_seed(0)
    qkv = [torch.randn_like(frames) for _ in range(3)]
    results = []
    for attend in (grid_attention, per_clip_attention):
        leaves = [t.clone().requires_grad_(True) for t in qkv]
        out = attend(*leaves, layout, heads)
        out.square().sum().backward()
        results.append((out.detach(), torch.cat([t.grad for t in leaves])))
    (grid_out, grid_grad), (clip_out, clip_grad) = results
    torch.testing.assert_close(clip_out, grid_out, rtol=1e-5, atol=1e-5)
    assert (clip_grad - grid_grad).norm() <= 1e-5 * grid_grad.norm()  # float32 rounding
