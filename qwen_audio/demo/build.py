"""The demo model's starting checkpoint: a tokenizer trained on the demo's text, Whisper tiny.en's
encoder, and a random projector and Qwen2 decoder, written as a hub-layout folder.

What the folder holds (the same files as a real Qwen2-Audio checkpoint, see QWEN2_AUDIO.md):
    config.json              audio_config from the converted encoder, a small Qwen2 text_config
    model.safetensors        hub key names; the head is stored (transformers does not tie it)
    vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
    added_tokens.json        a byte-level BPE with Qwen2's pre-tokenizer + the six special tokens
    chat_template.json, preprocessor_config.json (80 mel bins), generation_config.json (greedy)

Size: tiny.en's encoder is 8.2 M parameters (16.4 MB in fp16, positions included); the default
decoder below is 4.7 M with its 512-token embeddings and head, so the fp16 model is ~26 MB.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
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
from torch import nn

from qwen_audio.config import ModelConfig
from qwen_audio.demo.whisper_ct2 import (
    convert_whisper_encoder,
    encoder_audio_config,
    find_whisper_tiny_en,
    read_ct2_model,
)
from qwen_audio.model.qwen2 import RMSNorm
from qwen_audio.model.qwen2_audio import Qwen2AudioForConditionalGeneration
from qwen_audio.prompt import DEFAULT_CHAT_TEMPLATE
from qwen_audio.tokenizer import ENDOFTEXT, IM_END, QWEN2_SPLIT_PATTERN, REQUIRED_SPECIAL_TOKENS

INIT_STD = 0.02  # GPT-2's initialisation of linear and embedding weights
# The words the chat template adds to every conversation; counted once per training conversation,
# they become whole tokens (at first "assistant" alone was 6 tokens and the template's text a third
# of a transcription row's tokens).
TEMPLATE_TEXT = "system\nYou are a helpful assistant.\nuser\nAudio 1: \nassistant\n"


@dataclass(frozen=True)
class DecoderShape:
    """The demo's Qwen2 decoder; names follow `text_config`."""

    # tokenizer (BPE + 6 special tokens) = LM vocab. Small on purpose: short sub-word units recur
    # across many words, so a word seen a few times in training is still spelled right (384 beat
    # 1,024); 512 leaves room for the chat template's words as whole tokens.
    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 4  # head_dim 64
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048  # 30 s of audio is 750 positions
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6


def train_tokenizer(
    lines: Iterable[str], out_dir: str | Path, vocab_size: int = DecoderShape.vocab_size
) -> dict[str, int]:
    """Train a byte-level BPE on `lines` (one training conversation's text each) and write the
    tokenizer files of a Qwen2 checkpoint.

    `vocab_size` counts the six special tokens, which take the last ids (as in the real
    tokenizer, where they follow the BPE vocabulary). Returns the special ids by token.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(REQUIRED_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((TEMPLATE_TEXT + line for line in lines), trainer=trainer)
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in REQUIRED_SPECIAL_TOKENS]
    )
    ids = {t: tok.token_to_id(t) for t in REQUIRED_SPECIAL_TOKENS}
    tok.model.save(str(out))  # vocab.json + merges.txt
    tok.save(str(out / "tokenizer.json"))
    others = [t for t in REQUIRED_SPECIAL_TOKENS if t != ENDOFTEXT]
    decoder = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for t, i in ids.items()
    }  # fmt: skip
    _write_json(out / "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": others, "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": ENDOFTEXT, "errors": "replace",
        "model_max_length": 32768, "pad_token": ENDOFTEXT, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    })  # fmt: skip
    _write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": others, "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT,
    })  # fmt: skip
    _write_json(out / "added_tokens.json", ids)
    return ids


def model_config(audio_config: dict, shape: DecoderShape, ids: dict[str, int]) -> dict:
    """config.json in the hub's (transformers 4.x) style."""
    text = {
        "model_type": "qwen2",
        **{k: v for k, v in asdict(shape).items()},
        "head_dim": shape.hidden_size // shape.num_attention_heads,
        "hidden_act": "silu",
        # Untied: transformers' Qwen2-Audio loads the head from the file and never ties it.
        "tie_word_embeddings": False,
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[ENDOFTEXT],
    }
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "model_type": "qwen2_audio",
        "audio_token_index": ids["<|AUDIO|>"],
        "audio_config": audio_config,
        "text_config": text,
        "torch_dtype": "float32",
    }


def write_side_files(out_dir: Path, ids: dict[str, int], num_mel_bins: int) -> None:
    """Chat template, feature extractor and generation settings (greedy by default)."""
    _write_json(out_dir / "chat_template.json", {"chat_template": DEFAULT_CHAT_TEMPLATE})
    _write_json(out_dir / "preprocessor_config.json", {
        "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": num_mel_bins, "hop_length": 160, "n_fft": 400,
        "n_samples": 480000,  # 30 s at 16 kHz
        "nb_max_frames": 3000,  # 480000 / 160
        "padding_side": "right", "padding_value": 0.0, "processor_class": "Qwen2AudioProcessor",
        "return_attention_mask": True, "sampling_rate": 16000,
    })  # fmt: skip
    _write_json(out_dir / "generation_config.json", {
        "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]], "pad_token_id": ids[ENDOFTEXT],
        "do_sample": False, "max_new_tokens": 128,
    })  # fmt: skip


def init_weights(
    config: dict, encoder_state: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """Every weight of the model: the given encoder, and a seeded random projector and decoder.

    Linear and embedding weights ~ N(0, 0.02), the residual outputs (o_proj, down_proj) scaled
    down by sqrt(2 x layers) as in GPT-2, biases zero, RMSNorm weights one.
    """
    cfg = ModelConfig.from_dict(config)
    model = Qwen2AudioForConditionalGeneration(cfg)
    generator = torch.Generator().manual_seed(seed)
    residual_std = INIT_STD / (2 * cfg.text.num_hidden_layers) ** 0.5
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.startswith("audio_tower"):
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(("o_proj", "down_proj")) else INIT_STD
                module.weight.normal_(0.0, std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    missing = set(encoder_state) - set(state)
    if missing:
        raise ValueError(f"encoder weights the model does not have: {sorted(missing)[:3]}")
    for name, value in encoder_state.items():
        if state[name].shape != value.shape:
            raise ValueError(f"{name}: {tuple(value.shape)} != {tuple(state[name].shape)}")
        state[name] = value.float().contiguous()
    return state


def build_initial_checkpoint(
    out_dir: str | Path,
    text_lines: Iterable[str],
    *,
    seed: int = 0,
    shape: DecoderShape = DecoderShape(),
    whisper_model_bin: str | Path | None = None,
) -> Path:
    """Write the untrained demo checkpoint (float32) to `out_dir` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    whisper = read_ct2_model(whisper_model_bin or find_whisper_tiny_en())
    audio_config = encoder_audio_config(whisper)
    ids = train_tokenizer(text_lines, out, shape.vocab_size)
    if max(ids.values()) >= shape.vocab_size:
        raise ValueError(f"the tokenizer has {max(ids.values()) + 1} tokens > {shape.vocab_size}")
    config = model_config(audio_config, shape, ids)
    write_side_files(out, ids, audio_config["num_mel_bins"])
    state = init_weights(config, convert_whisper_encoder(whisper), seed)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config)  # last: the folder is complete
    return out


def parameter_counts(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Parameters per top-level part (audio_tower, multi_modal_projector, language_model)."""
    counts: dict[str, int] = {}
    for name, t in state.items():
        part = name.split(".")[0]
        counts[part] = counts.get(part, 0) + t.numel()
    return counts


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
