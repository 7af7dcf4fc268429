"""Builds a small Qwen2-style tokenizer folder for tests (and the random-weight checkpoints).

The layout mirrors the real Qwen2-Audio checkpoints as far as we know them:
- `vocab.json` + `merges.txt` (byte-level BPE, Qwen2 split regex, NFC), and `tokenizer.json`
  unless `with_tokenizer_json=False`;
- the six added tokens right after the BPE vocab, in the real order (`<|endoftext|>`,
  `<|im_start|>`, `<|im_end|>`, `<|AUDIO|>`, `<|audio_bos|>`, `<|audio_eos|>`; real ids
  151643..151648), all special, never normalised, no lstrip/rstrip;
- `tokenizer_config.json`: `Qwen2Tokenizer`, eos and pad both `<|endoftext|>`, no bos/unk, the
  five others listed as `additional_special_tokens`. Assumption (not checked against the hub
  files): the Instruct checkpoint uses the same tokenizer_config as the base one, and chat turns
  stop on `<|im_end|>` because `generation_config.json` lists it as an eos id;
- `special_tokens_map.json` and `added_tokens.json` as transformers' slow tokenizer writes them.
The training text is fixed, so the same call always gives the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)

# Kept in sync with qwen_audio.tokenizer.QWEN2_SPLIT_PATTERN on purpose: the fixture must not
# import the code it is used to test.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# English, Chinese, Japanese, emoji, digits and whitespace, so that some multi-byte characters get
# merges (one token) and others stay split over several byte tokens.
_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. What's that sound? It's glass breaking.",
    "Detect the language and recognize the speech: <en> Generate the caption in English:",
    "You are a helpful assistant. How about this one? I'll tell you what we've heard.",
    "Audio 1: the speaker says hello. Audio 2: a dog barks twice, then a door closes.",
    "你好，世界。这是一个语音识别的测试。今天天气很好，我们去公园散步吧。你好你好世界世界",
    "请把这段话翻译成英文。音乐很好听。声音很清楚。中文中文中文",
    "こんにちは、世界。音声認識のテストです。",
    "Emoji: 😀 😀 🎵 🎵 👍 🐶 ❤️ 🇫🇷 — naïve café résumé Straße",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1,000,000 25 dollars",
    "Tabs\tand  double  spaces,\n\nnew lines\r\n and    runs of   whitespace   \n",
    "def main():\n    return {'key': [1, 2, 3]}  # code-like text\n",
    "Paragraphs.\n\nAnother one.\n\nAnd a third.\n\n\nEnd.\n\n",
] * 4


def build_tokenizer(
    directory: str | Path, *, vocab_size: int = 400, with_tokenizer_json: bool = True
) -> dict[str, int]:
    """Writes the tokenizer files into `directory`; returns the special ids by short name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    bpe_size = tok.get_vocab_size()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for t in SPECIAL_TOKENS
        ]
    )
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    assert list(ids.values()) == list(range(bpe_size, bpe_size + len(SPECIAL_TOKENS))), ids

    tok.model.save(str(directory))  # vocab.json + merges.txt
    if with_tokenizer_json:
        tok.save(str(directory / "tokenizer.json"))
    else:
        (directory / "tokenizer.json").unlink(missing_ok=True)

    added_tokens_decoder = {
        str(idx): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for content, idx in ids.items()
    }
    additional = [t for t in SPECIAL_TOKENS if t != "<|endoftext|>"]
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": additional,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    special_map = {
        "additional_special_tokens": additional,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", special_map)
    _write_json(directory / "added_tokens.json", ids)
    return {
        "endoftext": ids["<|endoftext|>"],
        "im_start": ids["<|im_start|>"],
        "im_end": ids["<|im_end|>"],
        "audio": ids["<|AUDIO|>"],
        "audio_bos": ids["<|audio_bos|>"],
        "audio_eos": ids["<|audio_eos|>"],
        "eos": ids["<|endoftext|>"],
        "pad": ids["<|endoftext|>"],
        "vocab_size": bpe_size + len(SPECIAL_TOKENS),
    }


def write_preprocessor_config(directory: str | Path, n_mels: int = 128) -> None:
    """The WhisperFeatureExtractor config of the real checkpoints, with `n_mels` mel bins."""
    config = {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": n_mels,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,  # 30 s at 16 kHz
        "nb_max_frames": 3000,  # 480000 / 160
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "Qwen2AudioProcessor",
        "return_attention_mask": True,
        "sampling_rate": 16000,
    }
    _write_json(Path(directory) / "preprocessor_config.json", config)


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
