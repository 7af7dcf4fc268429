"""Tokenizer: id parity with transformers on both folder layouts, special ids, errors, and
UTF-8 safe incremental decoding."""

from __future__ import annotations

import json
import random

import pytest

from qwen_audio.tokenizer import IncrementalDecoder, Tokenizer, TokenizerError
from tests.fixtures.tokenizer_builder import SPECIAL_TOKENS, build_tokenizer

TRICKY = [
    "Hello world",
    "The quick brown fox. What's that sound? I'LL don't WE'RE",
    "你好，世界！这是一个语音识别的测试。",
    "こんにちは、世界。",
    "😀🎵👍🏽 ❤️ 🇫🇷 👨‍👩‍👧 emoji",
    "12345 3.14159 1,000,000 ١٢٣ ½ ²",
    "  leading\n\n\nnewlines\t\ttabs   trailing   ",
    "\r\n \n  \n",
    "e\u0301 cafe\u0301 naïve Ｆｕｌｌｗｉｄｔｈ",  # NFC composes the combining accents
    "<|im_start|>user\nhi<|im_end|>\n<|audio_bos|><|AUDIO|><|audio_eos|>x",
    "a<|endoftext|>b <|im_end|> c<|AUDIO|><|AUDIO|>",
    "<|im_start",  # an incomplete special token is plain text
    "",
    " ",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same tokenizer saved with and without tokenizer.json."""
    with_json = tmp_path_factory.mktemp("tok_json")
    without_json = tmp_path_factory.mktemp("tok_bpe")
    ids = build_tokenizer(with_json)
    assert build_tokenizer(without_json, with_tokenizer_json=False) == ids
    assert not (without_json / "tokenizer.json").exists()
    return {"tokenizer.json": with_json, "vocab+merges": without_json, "ids": ids}


@pytest.fixture(scope="module")
def tok(folders):
    return Tokenizer.from_dir(folders["tokenizer.json"])


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab+merges"])
def test_ids_and_text_match_transformers(folders, layout):
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_dir(folders[layout])
    ref = transformers.AutoTokenizer.from_pretrained(folders[layout])
    assert ours.vocab_size == len(ref)
    for text in TRICKY:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        for skip in (True, False):
            assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), text


def test_both_layouts_agree(folders):
    a = Tokenizer.from_dir(folders["tokenizer.json"])
    b = Tokenizer.from_dir(folders["vocab+merges"])
    for text in TRICKY:
        assert a.encode(text) == b.encode(text), text
    assert a.special_token_ids == b.special_token_ids


def test_special_ids(tok, folders):
    ids = folders["ids"]
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id) == (400, 401, 402)
    assert (tok.audio_token_id, tok.audio_bos_id, tok.audio_eos_id) == (403, 404, 405)
    assert tok.audio_token_id == ids["audio"] and tok.vocab_size == ids["vocab_size"] == 406
    assert tok.eos_token_id == tok.pad_token_id == tok.endoftext_id  # tokenizer_config's eos/pad
    assert tok.eos_token_ids == [tok.endoftext_id, tok.im_end_id]
    assert tok.token_to_id("<|AUDIO|>") == 403 and tok.token_to_id("no such token") is None
    assert tok.special_token_ids == frozenset(range(400, 406))
    # Written in the text, special tokens are single ids; decode drops them unless asked.
    assert tok.encode("<|audio_bos|><|AUDIO|><|audio_eos|>") == [404, 403, 405]
    ids_hi = tok.encode("<|im_start|>hi<|im_end|>")
    assert ids_hi[0] == 401 and ids_hi[-1] == 402
    assert tok.decode(ids_hi) == "hi"
    assert tok.decode(ids_hi, skip_special_tokens=False) == "<|im_start|>hi<|im_end|>"


def test_added_tokens_json_alone_is_enough(folders, tmp_path):
    """vocab.json + merges.txt with the added tokens only in added_tokens.json and
    special_tokens_map.json (no added_tokens_decoder) gives the same tokenizer."""
    src = folders["vocab+merges"]
    for name in ("vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"], config["additional_special_tokens"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    ref = Tokenizer.from_dir(src)
    for text in TRICKY:
        assert tok.encode(text) == ref.encode(text)
    assert tok.special_token_ids == ref.special_token_ids  # still special: skipped on decode


def _copy(src, dst, skip=()):
    for path in src.iterdir():
        if path.name not in skip:
            (dst / path.name).write_bytes(path.read_bytes())


def test_errors_name_the_file(folders, tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="vocab.json"):
        Tokenizer.from_dir(tmp_path)  # an empty folder

    src = folders["vocab+merges"]
    cases = {
        "tokenizer_config.json": "{not json",
        "vocab.json": "[1, 2, 3]",
        "merges.txt": "#version: 0.2\nthree parts here\n",
        "added_tokens.json": '{"<|AUDIO|>": 999}',
    }
    for name, text in cases.items():
        bad = tmp_path / name.replace(".", "_")
        bad.mkdir()
        _copy(src, bad)
        (bad / name).write_text(text)
        with pytest.raises(TokenizerError, match=name.replace(".", r"\.")):
            Tokenizer.from_dir(bad)

    corrupt = tmp_path / "corrupt_json"
    corrupt.mkdir()
    _copy(folders["tokenizer.json"], corrupt)
    (corrupt / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(corrupt)


def test_missing_audio_token_is_an_error(folders, tmp_path):
    src = folders["vocab+merges"]
    _copy(src, tmp_path, skip={"added_tokens.json"})
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {
        k: v for k, v in config["added_tokens_decoder"].items() if v["content"] != "<|audio_eos|>"
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=r"<\|audio_eos\|>"):
        Tokenizer.from_dir(tmp_path)


# ---- incremental decoding ----------------------------------------------------------------------


def _stream(tok, ids, skip=True):
    decoder = IncrementalDecoder(tok, skip_special_tokens=skip)
    deltas = [decoder.push(i) for i in ids]
    return deltas, decoder.flush()


def test_fixture_splits_characters_over_byte_tokens(tok):
    """The streaming tests below are only meaningful if some characters span several tokens."""
    for text in ("😀", "👍🏽", "世", "🇫🇷"):
        ids = tok.encode(text)
        assert len(ids) > 1, text
        assert "\ufffd" in tok.decode(ids[:1])


@pytest.mark.parametrize("text", TRICKY)
def test_streaming_never_splits_a_character(tok, text):
    ids = tok.encode(text)
    for skip in (True, False):
        deltas, tail = _stream(tok, ids, skip)
        assert "".join(deltas) + tail == tok.decode(ids, skip)
        assert tail == ""  # valid text leaves nothing held back
        emitted = ""
        for k, delta in enumerate(deltas, start=1):
            assert "\ufffd" not in delta
            emitted += delta
            # Text is released as soon as it is complete, no later.
            assert emitted == tok.decode(ids[:k], skip).rstrip("\ufffd")


def test_streaming_holds_an_emoji_until_its_last_byte(tok):
    ids = tok.encode("a😀")
    deltas, _ = _stream(tok, ids)
    assert deltas[0] == "a"
    assert deltas[1:-1] == [""] * (len(ids) - 2)
    assert deltas[-1] == "😀"


def test_streaming_random_ids_equals_decode(tok):
    """Random ids (byte tokens that form invalid UTF-8, specials in the middle of a character):
    the deltas still add up to decode(all ids), and incomplete tails come out on flush."""
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 12))]
        for skip in (True, False):
            deltas, tail = _stream(tok, ids, skip)
            assert "".join(deltas) + tail == tok.decode(ids, skip), ids


def test_streaming_matches_transformers_decode(folders, tok):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(folders["tokenizer.json"])
    ids = tok.encode("你好😀<|im_end|>🇫🇷 ok")
    for skip in (True, False):
        deltas, tail = _stream(tok, ids, skip)
        assert "".join(deltas) + tail == ref.decode(ids, skip_special_tokens=skip)


def test_special_token_list_is_the_real_order():
    assert SPECIAL_TOKENS == (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|AUDIO|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
    )


def test_long_texts_take_the_gil_free_path_with_the_same_ids(tok):
    from qwen_audio.tokenizer import GIL_FREE_CHARS

    text = "".join(TRICKY) * (GIL_FREE_CHARS // max(1, len("".join(TRICKY))) + 2)
    assert len(text) > GIL_FREE_CHARS
    assert tok.encode(text) == tok._tok.encode(text, add_special_tokens=False).ids
