"""Prompt rendering: the chat template, audio-placeholder expansion and loss masks, checked
against transformers' Qwen2AudioProcessor on a small tokenizer."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import soundfile as sf

from qwen_audio.audio import AudioError, audio_content_hash, num_audio_tokens
from qwen_audio.prompt import (
    DEFAULT_CHAT_TEMPLATE,
    PromptError,
    PromptRenderer,
    _normalize_messages,
    load_chat_template,
)
from qwen_audio.tokenizer import Tokenizer
from tests.fixtures.tokenizer_builder import build_tokenizer, write_preprocessor_config

N_MELS = 80
SR = 16000


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SR))).astype(np.float32)


A_1_5S = _noise(1.5, 0)  # 37 audio tokens
A_7S = _noise(7.0, 1)  # 175
A_29_9S = _noise(29.9, 2)  # 747


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    write_preprocessor_config(path, N_MELS)
    return path


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer.from_dir(folder)


@pytest.fixture(scope="module")
def renderer(tok):
    return PromptRenderer(tok, None, N_MELS)


@pytest.fixture(scope="module")
def processor(folder):
    transformers = pytest.importorskip("transformers")
    proc = transformers.AutoProcessor.from_pretrained(folder)
    assert type(proc).__name__ == "Qwen2AudioProcessor"
    return proc


def _reference_ids(processor, messages, audios, add_generation_prompt=True):
    text = processor.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    if not audios:
        return processor.tokenizer(text)["input_ids"]
    out = processor(text=text, audio=audios, sampling_rate=SR)
    return out["input_ids"][0]


CONVERSATIONS = {
    "voice_chat_two_audios": [
        {"role": "user", "content": [{"type": "audio", "audio": A_1_5S}]},
        {"role": "assistant", "content": "Yes, I can hear you. 你好！"},
        {"role": "user", "content": [{"type": "audio", "audio": A_7S}]},
    ],
    "analysis_with_system": [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": A_29_9S},
                {"type": "text", "text": "What's that sound? 😀"},
            ],
        },
    ],
    "analysis_text_first_custom_system": [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these: "},
                {"type": "audio", "audio": A_7S},
                {"type": "audio", "audio": A_1_5S},
                {"type": "text", "text": "Which one is longer?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "The first."}]},
        {"role": "user", "content": "And in 2 words?"},
    ],
    "string_content_only": [
        {"role": "user", "content": "  Hello\n\nthere\t"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Bye"},
    ],
}


def _audios(messages):
    return [
        part["audio"]
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
        if part["type"] == "audio"
    ]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_builtin_template_renders_like_transformers(
    renderer, processor, name, add_generation_prompt
):
    """Our template, written from the rules, gives the text of transformers' Qwen2-Audio
    template (the processor's default: the folder has no chat template)."""
    messages = CONVERSATIONS[name]
    chat, _ = _normalize_messages(messages)
    ours = renderer._render_text(chat, add_generation_prompt)
    ref = processor.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert ours == ref


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_ids_match_processor(renderer, processor, name):
    messages = CONVERSATIONS[name]
    audios = _audios(messages)
    out = renderer.render_chat(messages)
    assert out.token_ids == _reference_ids(processor, messages, audios)
    assert [c.num_tokens for c in out.audio_clips] == [num_audio_tokens(a.size) for a in audios]
    assert out.num_audio_tokens == out.token_ids.count(renderer.tokenizer.audio_token_id)
    assert out.audio_hashes == [audio_content_hash(a) for a in audios]
    assert out.loss_mask is None
    # The loss mask changes no id, and covers the assistant replies (with <|im_end|>) only.
    masked = renderer.render_chat(messages, with_loss_mask=True)
    assert masked.token_ids == out.token_ids
    learned = [t for t, m in zip(masked.token_ids, masked.loss_mask) if m]
    replies = [
        m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])
        for m in messages
        if m["role"] == "assistant"
    ]
    assert renderer.tokenizer.decode(learned, False) == "".join(r + "<|im_end|>" for r in replies)


def test_token_counts_of_the_reference_lengths(renderer):
    out = renderer.render_raw(
        "<|audio_bos|><|AUDIO|><|audio_eos|>" * 3 + "x", [A_1_5S, A_7S, A_29_9S]
    )
    assert [c.num_tokens for c in out.audio_clips] == [37, 175, 747]
    assert out.num_audio_tokens == 37 + 175 + 747


def test_raw_prompt_matches_processor(renderer, processor):
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"
    out = renderer.render_raw(prompt, [A_7S])
    ref = processor(text=prompt, audio=[A_7S], sampling_rate=SR)["input_ids"][0]
    assert out.token_ids == ref
    two = "<|audio_bos|><|AUDIO|><|audio_eos|>A <|audio_bos|><|AUDIO|><|audio_eos|>B: <|en|>"
    out = renderer.render_raw(two, [A_1_5S, A_29_9S])
    ref = processor(text=two, audio=[A_1_5S, A_29_9S], sampling_rate=SR)["input_ids"][0]
    assert out.token_ids == ref
    assert renderer.render_raw("no audio here").token_ids == renderer.tokenizer.encode(
        "no audio here"
    )


def test_audio_input_forms_give_the_same_ids(renderer, tmp_path):
    """path, audio_url, bytes, (array, rate), OpenAI input_audio (array, bytes, base64) and
    OpenAI audio_url all become the same audio."""
    wav = tmp_path / "a.wav"
    sf.write(wav, A_1_5S, SR, subtype="FLOAT")
    data = wav.read_bytes()

    def conv(part):
        return [{"role": "user", "content": [part, {"type": "text", "text": "Describe it."}]}]

    expected = renderer.render_chat(conv({"type": "audio", "audio": A_1_5S}))
    forms = [
        {"type": "audio", "audio": str(wav)},
        {"type": "audio", "audio": wav},
        {"type": "audio", "audio_url": str(wav)},
        {"type": "audio", "audio": data},
        {"type": "audio", "audio": (A_1_5S, SR)},
        {"type": "audio", "audio": {"array": A_1_5S, "sampling_rate": SR}},
        {"audio": A_1_5S},  # no "type": recognised by its key
        {"type": "input_audio", "input_audio": {"data": A_1_5S, "format": "pcm"}},
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"},
        },
        {"type": "audio_url", "audio_url": {"url": str(wav)}},
        {
            "type": "audio_url",
            "audio_url": {"url": "data:audio/wav;base64," + base64.b64encode(data).decode()},
        },
    ]
    for part in forms:
        out = renderer.render_chat(conv(part))
        assert out.token_ids == expected.token_ids, part
        assert out.audio_hashes == expected.audio_hashes, part


def test_array_with_other_rate_is_resampled(renderer):
    at_8k = _noise(2.0, 3)[: 2 * 8000]
    out = renderer.render_raw("<|audio_bos|><|AUDIO|><|audio_eos|>", [(at_8k, 8000)])
    assert out.num_audio_tokens == num_audio_tokens(2 * SR)


def test_long_audio_windows_share_one_placeholder(tok):
    long = _noise(45.0, 4)
    renderer = PromptRenderer(tok, None, N_MELS)
    out = renderer.render_raw("<|audio_bos|><|AUDIO|><|audio_eos|>Transcribe:", [long])
    assert [c.num_tokens for c in out.audio_clips] == [750, num_audio_tokens(15 * SR)]
    bos = out.token_ids.index(tok.audio_bos_id)
    eos = out.token_ids.index(tok.audio_eos_id)
    assert out.token_ids[bos + 1 : eos] == [tok.audio_token_id] * out.num_audio_tokens
    assert out.audio_hashes == [
        audio_content_hash(long[: 30 * SR]),
        audio_content_hash(long[30 * SR :]),
    ]
    truncating = PromptRenderer(tok, None, N_MELS, long_audio="truncate")
    assert truncating.render_raw("<|AUDIO|>", [long]).num_audio_tokens == 750
    refusing = PromptRenderer(tok, None, N_MELS, long_audio="error")
    with pytest.raises(AudioError, match="audio 0"):
        refusing.render_raw("<|AUDIO|>", [long])


def test_placeholder_mismatch_is_an_error(renderer):
    with pytest.raises(PromptError, match=r"2 <\|AUDIO\|> placeholder\(s\) but 1 audio"):
        renderer.render_raw("<|AUDIO|> and <|AUDIO|>", [A_1_5S])
    with pytest.raises(PromptError, match=r"0 <\|AUDIO\|> placeholder\(s\) but 1 audio"):
        renderer.render_raw("no placeholder", [A_1_5S])
    with pytest.raises(PromptError, match=r"1 <\|AUDIO\|> placeholder\(s\) but 0 audio"):
        renderer.render_raw("<|audio_bos|><|AUDIO|><|audio_eos|>")
    # A placeholder typed into a chat message counts too: it is never silently dropped.
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": A_1_5S},
                {"type": "text", "text": "what about <|AUDIO|>?"},
            ],
        }
    ]
    with pytest.raises(PromptError, match=r"2 <\|AUDIO\|> placeholder\(s\) but 1 audio"):
        renderer.render_chat(messages)
    # A template that writes no placeholder for the audio parts.
    text_only = PromptRenderer(
        renderer.tokenizer, "{% for m in messages %}{{ m['role'] }}{% endfor %}", N_MELS
    )
    with pytest.raises(PromptError, match=r"0 <\|AUDIO\|> placeholder\(s\) but 1 audio"):
        text_only.render_chat(messages[:1])


def test_bad_parts_and_messages(renderer):
    bad_part = [
        {"role": "user", "content": "hi"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
                {"type": "image", "image": "x.png"},
            ],
        },
    ]
    with pytest.raises(PromptError, match=r"message 1, part 2: unknown content part type 'image'"):
        renderer.render_chat(bad_part)
    cases = {
        "message 0 has no 'role'": [{"content": "hi"}],
        "message 0: 'content' must be": [{"role": "user", "content": 3}],
        "part 0: a content part must be a dict": [{"role": "user", "content": ["hi"]}],
        "part 0: a text part needs": [{"role": "user", "content": [{"type": "text"}]}],
        "part 0: an audio part needs": [{"role": "user", "content": [{"type": "audio"}]}],
        "not valid base64": [
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": "@@not base64@@"}}],
            }
        ],
        "messages must be a list": "hello",
    }
    for match, messages in cases.items():
        with pytest.raises(PromptError, match=match):
            renderer.render_chat(messages)
    with pytest.raises(AudioError, match="message 0, part 0"):
        renderer.render_chat(
            [{"role": "user", "content": [{"type": "audio", "audio": b"not audio at all"}]}]
        )


def test_loss_mask_hand_checked(renderer, tok):
    messages = [
        {
            "role": "user",
            "content": [{"type": "audio", "audio": A_1_5S}, {"type": "text", "text": "Hi"}],
        },
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Again in 中文?"},
        {"role": "assistant", "content": "你好 😀"},
    ]
    out = renderer.render_chat(messages, add_generation_prompt=False, with_loss_mask=True)
    plain = renderer.render_chat(messages, add_generation_prompt=False)
    assert out.token_ids == plain.token_ids
    assert len(out.loss_mask) == len(out.token_ids)
    # The learned tokens are exactly the two replies, each with its closing <|im_end|>.
    runs, current = [], []
    for token_id, learn in zip(out.token_ids, out.loss_mask):
        if learn:
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    assert current == []  # the trailing "\n" after the last <|im_end|> is not learned
    assert runs == [
        tok.encode("Hello there.") + [tok.im_end_id],
        tok.encode("你好 😀") + [tok.im_end_id],
    ]
    assert sum(out.loss_mask) == len(runs[0]) + len(runs[1])
    # Audio, system, user and template tokens are never learned.
    for token_id, learn in zip(out.token_ids, out.loss_mask):
        if token_id in (tok.audio_token_id, tok.im_start_id, tok.audio_bos_id):
            assert not learn


def test_loss_mask_refuses_inexact_split(renderer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "\nStarts with a newline."},
    ]
    with pytest.raises(PromptError, match="tokenises differently"):
        renderer.render_chat(messages, add_generation_prompt=False, with_loss_mask=True)


def test_raw_target_mask(renderer, tok):
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"
    out = renderer.render_raw(prompt, [A_1_5S], target=" A dog barks.")
    target = tok.encode(" A dog barks.") + [tok.eos_token_id]
    assert out.token_ids[-len(target) :] == target
    assert out.loss_mask == [False] * (len(out.token_ids) - len(target)) + [True] * len(target)
    assert out.token_ids[: -len(target)] == renderer.render_raw(prompt, [A_1_5S]).token_ids


# ---- chat template files -----------------------------------------------------------------------

CUSTOM = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"


def test_load_chat_template_sources(tmp_path):
    assert load_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "from config"}))
    assert load_chat_template(tmp_path) == "from config"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "from json"}))
    assert load_chat_template(tmp_path) == "from json"
    (tmp_path / "chat_template.jinja").write_text("from jinja")
    assert load_chat_template(tmp_path) == "from jinja"

    named = tmp_path / "named"
    named.mkdir()
    templates = [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]
    (named / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
    assert load_chat_template(named) == "d"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "chat_template.json").write_text("{oops")
    with pytest.raises(PromptError, match=r"chat_template\.json"):
        load_chat_template(broken)


def test_custom_and_hostile_templates(tok):
    custom = PromptRenderer(tok, CUSTOM, N_MELS)
    out = custom.render_chat([{"role": "user", "content": "hi"}])
    assert out.token_ids == tok.encode("[user]hi")
    with pytest.raises(PromptError, match="does not compile"):
        PromptRenderer(tok, "{% for %}", N_MELS)
    refusing = PromptRenderer(tok, "{{ raise_exception('no system role') }}", N_MELS)
    with pytest.raises(PromptError, match="no system role"):
        refusing.render_chat([{"role": "user", "content": "hi"}])
    escaping = PromptRenderer(tok, "{{ messages.__class__.__mro__ }}", N_MELS)
    with pytest.raises(PromptError, match="failed to render"):
        escaping.render_chat([{"role": "user", "content": "hi"}])
    # `{% generation %}` blocks (transformers' assistant-mask marker) render their body.
    marked = PromptRenderer(tok, "{% generation %}x{% endgeneration %}", N_MELS)
    assert marked.render_chat([]).token_ids == tok.encode("x")


def test_builtin_template_is_the_default(tok):
    assert PromptRenderer(tok, None, N_MELS).chat_template == DEFAULT_CHAT_TEMPLATE
