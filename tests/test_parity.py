"""Our model against transformers on the same random-weight checkpoints.

Tolerances: float32 logits agree to 1e-4 absolute (observed ~1e-6; the ops differ in order only).
Greedy tokens must be identical up to the first step whose top-1/top-2 margin in the reference is
below 1e-4, where rounding may legitimately flip the choice (QWEN2_AUDIO.md, random weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen_audio import LLM, SamplingParams
from qwen_audio.audio import prepare_audio
from qwen_audio.bench.worker import reference_messages
from qwen_audio.model.attention import AttentionBatch
from tests.conftest import noise_clip
from tests.fixtures.checkpoints import load_reference

LOGIT_TOL = 1e-4
MARGIN_TOL = 1e-4


def reference_audio_embeddings(ref, features, feature_mask):
    """The reference's projected audio embeddings, masked exactly as its forward masks them."""
    from transformers.masking_utils import create_bidirectional_mask

    tower = ref.model.audio_tower
    conv_len, _ = tower._get_feat_extract_output_lengths(feature_mask.sum(-1))
    max_len = (features.shape[-1] - 2) // 2 + 1
    mask_2d = (torch.arange(max_len)[None, :] < conv_len[:, None]).long()
    dummy = torch.zeros(features.shape[0], max_len, 1)
    mask = create_bidirectional_mask(
        config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d
    )
    hidden = tower(features, attention_mask=mask).last_hidden_state
    return ref.model.multi_modal_projector(hidden)


def hf_inputs(processor, convs, padding_side="left"):
    texts, audios = [], []
    for conv in convs:
        messages, a = reference_messages(conv)
        texts.append(
            processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
        audios += a
    processor.tokenizer.padding_side = padding_side
    return processor(
        text=texts, audio=audios or None, sampling_rate=16000, return_tensors="pt", padding=True
    )


def hf_greedy(model, inputs, max_new_tokens):
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=model.generation_config.pad_token_id,
    )
    start = inputs["input_ids"].shape[1]
    tokens = out.sequences[:, start:].tolist()
    top2 = torch.stack(out.scores, 1).topk(2, dim=-1).values  # (B, steps, 2)
    margins = (top2[..., 0] - top2[..., 1]).tolist()
    return tokens, margins


def assert_same_greedy(ours: list[int], ref: list[int], margins: list[float]) -> int:
    """Equal tokens until the end or until a near-tie; returns how many steps were compared."""
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            assert margins[i] < MARGIN_TOL, f"step {i}: {a} != {b} with margin {margins[i]:.2e}"
            return i
    # Every token agreed: the reference stops at eos or at max_tokens, and so must we.
    assert len(ours) == len(ref), f"ours has {len(ours)} tokens, the reference {len(ref)}"
    return len(ref)


def audio_conv(*clips, text=None, system=None):
    content = [{"type": "audio", "audio": (c, 16000)} for c in clips]
    if text:
        content.append({"type": "text", "text": text})
    conv = [{"role": "system", "content": system}] if system else []
    return conv + [{"role": "user", "content": content}]


@pytest.mark.parametrize("shape", ["mha", "gqa1", "gqa3"])
def test_encoder_and_last_logits_match(checkpoints, shape):
    path = checkpoints(shape)
    ref, processor = load_reference(path)
    llm = LLM(path, dtype="float32")
    for seconds in (0.2, 1.5, 7.0, 29.9):
        clip = noise_clip(seconds, seed=int(seconds * 10))
        conv = audio_conv(clip, text="What is this sound?")
        inputs = hf_inputs(processor, [conv])
        prompt = llm.renderer.render_chat(conv)
        assert prompt.token_ids == inputs["input_ids"][0].tolist()

        with torch.no_grad():
            # Encoder: the reference masks keys past the valid frames, as in its model forward.
            feats = inputs["input_features"]
            L = int(inputs["feature_attention_mask"].sum())
            ref_audio = reference_audio_embeddings(ref, feats, inputs["feature_attention_mask"])[0]
            clips = prepare_audio(clip, llm.model.config.audio.num_mel_bins)
            ours_audio = llm.model.encode_audio([c.features for c in clips], [L])[0]
            ref_audio = ref_audio[: ours_audio.shape[0]]
            assert ours_audio.shape[0] == clips[0].num_tokens
            torch.testing.assert_close(ours_audio, ref_audio, atol=LOGIT_TOL, rtol=0)

            ref_logits = ref(**inputs).logits[0, -1]
            ids = torch.tensor(prompt.token_ids)
            hidden = llm.model(
                ids, torch.arange(len(ids)), AttentionBatch.single(len(ids)), ours_audio
            )
            ours_logits = llm.model.logits(hidden[-1:])[0]
        torch.testing.assert_close(ours_logits, ref_logits, atol=LOGIT_TOL, rtol=0)


@pytest.mark.parametrize("shape", ["mha", "gqa1"])
def test_greedy_tokens_single_clip(checkpoints, shape):
    path = checkpoints(shape)
    ref, processor = load_reference(path)
    llm = LLM(path, dtype="float32")
    compared = 0
    for seconds in (1.5, 7.0):
        conv = audio_conv(noise_clip(seconds, seed=3), text="Describe the audio.")
        ref_tokens, margins = hf_greedy(ref, hf_inputs(processor, [conv]), 24)
        ours = llm.chat(conv, SamplingParams(temperature=0.0, max_tokens=24))[0]
        compared += assert_same_greedy(ours.token_ids, ref_tokens[0], margins[0])
    assert compared >= 24  # at least one full run of 24 tokens was compared


def test_system_prompt_and_multi_turn_voice_chat(checkpoints):
    path = checkpoints("gqa3")
    ref, processor = load_reference(path)
    llm = LLM(path, dtype="float32")
    a, b = noise_clip(2.0, seed=5), noise_clip(3.3, seed=6)
    analysis = audio_conv(a, text="What is happening?", system="You analyse sounds.")
    voice_chat = [
        {"role": "user", "content": [{"type": "audio", "audio": (a, 16000)}]},
        {"role": "assistant", "content": "A tone."},
        {"role": "user", "content": [{"type": "audio", "audio": (b, 16000)}]},
    ]
    for conv in (analysis, voice_chat):
        ref_tokens, margins = hf_greedy(ref, hf_inputs(processor, [conv]), 24)
        ours = llm.chat(conv, SamplingParams(temperature=0.0, max_tokens=24))[0]
        assert assert_same_greedy(ours.token_ids, ref_tokens[0], margins[0]) >= 8


def test_batch_equals_single_and_left_padded_reference(checkpoints):
    path = checkpoints("mha")
    ref, processor = load_reference(path)
    llm = LLM(path, dtype="float32")
    convs = [
        audio_conv(noise_clip(0.2, seed=1), text="Short?"),
        audio_conv(noise_clip(7.0, seed=2), noise_clip(1.5, seed=9), text="Compare the two."),
        [{"role": "user", "content": "No audio at all, just text."}],
    ]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    batched = llm.chat(convs, params)
    singles = [llm.chat(c, params)[0] for c in convs]
    assert [b.token_ids for b in batched] == [s.token_ids for s in singles]
    ref_tokens, margins = hf_greedy(ref, hf_inputs(processor, convs, padding_side="left"), 16)
    for ours, r, m in zip(batched, ref_tokens, margins):
        eos = ref.generation_config.pad_token_id
        r = r[: r.index(eos) + 1] if eos in r[:-1] else r  # the reference pads finished rows
        assert assert_same_greedy(ours.token_ids, r, m) >= min(8, len(r))


def test_raw_base_prompt_matches(checkpoints):
    path = checkpoints("gqa1")
    ref, processor = load_reference(path)
    llm = LLM(path, dtype="float32")
    clip = noise_clip(4.0, seed=4)
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"
    inputs = processor(text=[prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
    ref_tokens, margins = hf_greedy(ref, inputs, 24)
    ours = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=24), audios=[clip])[0]
    assert assert_same_greedy(ours.token_ids, ref_tokens[0], margins[0]) >= 8


def test_long_audio_is_windowed_not_truncated(checkpoints):
    llm = LLM(checkpoints("mha"), dtype="float32")
    clip = noise_clip(65.0, seed=8)
    prompt = llm.renderer.render_chat(audio_conv(clip, text="Summarise."))
    windows = prompt.audio_clips
    assert [round(c.end_s - c.start_s, 3) for c in windows] == [30.0, 30.0, 5.0]
    assert prompt.num_audio_tokens == sum(c.num_tokens for c in windows) == 750 + 750 + 125
    out = llm.chat(audio_conv(clip, text="Summarise."), SamplingParams(temperature=0, max_tokens=4))
    assert out[0].prompt_tokens == len(prompt.token_ids)


def test_cached_engine_equals_plain_forward(checkpoints):
    """Prefix-cache hits and continuous batching leave greedy tokens unchanged (float32)."""
    path = checkpoints("gqa1")
    llm = LLM(path, dtype="float32")
    a = noise_clip(5.0, seed=11)
    turn1 = [{"role": "user", "content": [{"type": "audio", "audio": (a, 16000)}]}]
    params = SamplingParams(temperature=0.0, max_tokens=12)
    first = llm.chat(turn1, params)[0]
    turn2 = turn1 + [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
    ]
    cached = llm.chat(turn2, params)[0]
    assert cached.cached_tokens > 0
    fresh = LLM(path, dtype="float32").chat(turn2, params)[0]
    assert fresh.cached_tokens == 0
    assert cached.token_ids == fresh.token_ids


def test_sampling_is_seeded(checkpoints):
    llm = LLM(checkpoints("mha"), dtype="float32")
    conv = audio_conv(noise_clip(1.0), text="Hi")
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=12)
    a, b = llm.chat(conv, p)[0], llm.chat(conv, p)[0]
    assert a.token_ids == b.token_ids
    c = llm.chat(conv, SamplingParams(temperature=0.9, seed=99, max_tokens=12))[0]
    assert c.token_ids != a.token_ids


def test_min_tokens_and_stop_strings(checkpoints):
    llm = LLM(checkpoints("mha"), dtype="float32")
    conv = audio_conv(noise_clip(1.0), text="Hi")
    greedy = llm.chat(conv, SamplingParams(temperature=0, max_tokens=20))[0]
    assert greedy.finish_reason in ("stop", "length")
    text = greedy.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip():
        stopped = llm.chat(conv, SamplingParams(temperature=0, max_tokens=20, stop=[stop]))[0]
        assert stopped.finish_reason == "stop"
        assert stopped.text == text[: text.index(stop)]
    long = llm.chat(conv, SamplingParams(temperature=0, max_tokens=20, min_tokens=20))[0]
    assert len(long.token_ids) == 20


def test_streaming_deltas_join_to_the_full_text(checkpoints):
    llm = LLM(checkpoints("mha"), dtype="float32")
    conv = audio_conv(noise_clip(1.0), text="Hi")
    params = SamplingParams(temperature=0, max_tokens=20)
    full = llm.chat(conv, params)[0]
    deltas = list(llm.stream_chat(conv, params))
    assert "".join(d.text for d in deltas) == full.text
    assert sum((d.token_ids for d in deltas), []) == full.token_ids
    assert deltas[-1].finish_reason == full.finish_reason
    assert all("\ufffd" not in d.text for d in deltas[:-1]) or "\ufffd" in full.text


def test_prompt_over_context_is_rejected(checkpoints):
    from qwen_audio.engine.engine import ContextLengthError

    path = checkpoints("mha", generation_config=None)
    llm = LLM(path, dtype="float32")
    llm.engine.max_model_len = 64
    with pytest.raises(ContextLengthError, match="context"):
        llm.chat(audio_conv(noise_clip(3.0), text="too long"), SamplingParams(max_tokens=4))


def test_bf16_runs_and_mostly_agrees(checkpoints):
    path = checkpoints("mha")
    conv = audio_conv(noise_clip(2.0, seed=21), text="Hi")
    f32 = LLM(path, dtype="float32")
    bf16 = LLM(path, dtype="bfloat16")
    assert bf16.model.language_model.lm_head.weight.dtype == torch.bfloat16
    ids = f32.renderer.render_chat(conv)
    a = f32.chat(conv, SamplingParams(temperature=0, max_tokens=8))[0]
    b = bf16.chat(conv, SamplingParams(temperature=0, max_tokens=8))[0]
    assert len(b.token_ids) >= 1 and len(ids.token_ids) > 0
    assert a.token_ids[0] == b.token_ids[0]


def test_numpy_input_validation(checkpoints):
    from qwen_audio.audio import AudioError

    llm = LLM(checkpoints("mha"), dtype="float32")
    bad = np.full(16000, np.nan, dtype=np.float32)
    with pytest.raises(AudioError):
        llm.chat(audio_conv(bad, text="x"), SamplingParams(max_tokens=2))


@pytest.mark.slow
def test_generated_audio_token_is_plain_text(checkpoints):
    """The model may emit `<|AUDIO|>` itself; like the reference, it is embedded as a token."""
    path = checkpoints("mha")
    llm = LLM(path, dtype="float32")
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech:"
    clip = noise_clip(30.0)
    params = SamplingParams(temperature=0, max_tokens=400)
    ours = llm.generate(prompt, params, audios=[(clip, 16000)])[0].token_ids
    assert llm.tokenizer.audio_token_id in ours  # precondition of this fixture (step 376)
    ref, processor = load_reference(path)
    inputs = processor(text=[prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
    ref_tokens, margins = hf_greedy(ref, inputs, 400)
    assert assert_same_greedy(ours, ref_tokens[0], margins[0]) > 376


def test_16_bit_weights_with_float32_activations_match(checkpoints, monkeypatch):
    """bf16 weights kept as stored, activations in float32 (CPUs without native bf16; forced
    here so AVX-512 machines run this path too): the reference in float32 on the same weights."""
    monkeypatch.setenv("QWEN_AUDIO_ISA", "avx2")
    path = checkpoints("mha", save_dtype=torch.bfloat16)
    ref, processor = load_reference(path)
    llm = LLM(path)  # auto: bf16 stays bf16
    plan = llm.checkpoint.precision
    assert (plan.weights, plan.compute) == (torch.bfloat16, torch.float32)
    lm_head = llm.model.language_model.lm_head
    assert lm_head.weight.dtype == torch.bfloat16
    conv = audio_conv(noise_clip(3.0, seed=7), text="Describe the audio.")
    inputs = hf_inputs(processor, [conv])
    prompt = llm.renderer.render_chat(conv)
    with torch.no_grad():
        ref_logits = ref(**inputs).logits[0, -1]
        clips = prompt.audio_clips
        audio = llm.model.encode_audio([c.features for c in clips], [c.num_frames for c in clips])
        ids = torch.tensor(prompt.token_ids)
        hidden = llm.model(ids, torch.arange(len(ids)), AttentionBatch.single(len(ids)), audio[0])
        ours_logits = llm.model.logits(hidden[-1:])[0]
    torch.testing.assert_close(ours_logits, ref_logits, atol=LOGIT_TOL, rtol=0)
    ref_tokens, margins = hf_greedy(ref, inputs, 16)
    ours = llm.chat(conv, SamplingParams(temperature=0.0, max_tokens=16))[0]
    assert assert_same_greedy(ours.token_ids, ref_tokens[0], margins[0]) >= 8
