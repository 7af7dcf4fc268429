"""Random-weight Qwen2-Audio checkpoints in the real hub layout, for benchmarks and tests.

- `build_checkpoint`: transformers (dev extra) creates the weights; we write the safetensors and
  JSON files ourselves with the hub's (v4) key names, because `save_pretrained` in transformers 5
  writes its own names. The tests' tiny shapes are in `SHAPES`; `BENCH_SHAPE` is Qwen2-0.5B-sized.
- `write_streamed`: Qwen2-Audio-7B's exact shapes (`SHAPE_7B`) without transformers, written
  shard by shard so that a 15.6 GiB checkpoint needs a few GiB of memory.
`python benchmarks/make_checkpoint.py DIR --preset 0.5b|7b` writes either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from .tokenizer_builder import build_tokenizer, write_preprocessor_config


@dataclass(frozen=True)
class Shape:
    """Sizes of a tiny checkpoint; names follow config.json."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 128
    vocab_size: int = 512  # the LM vocab is larger than the tokenizer's, as in the real model
    d_model: int = 64
    encoder_layers: int = 2
    encoder_attention_heads: int = 4
    encoder_ffn_dim: int = 128
    num_mel_bins: int = 128
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    extra_text: dict = field(default_factory=dict)


SHAPES = {
    # plain multi-head attention, 128 mel bins, untied head stored in the file
    "mha": Shape(),
    # grouped-query attention with odd head counts and a single KV head, 80 mel bins
    "gqa1": Shape(
        hidden_size=60,
        num_attention_heads=5,
        num_key_value_heads=1,
        intermediate_size=96,
        d_model=48,
        encoder_attention_heads=3,
        encoder_ffn_dim=80,
        num_mel_bins=80,
        rope_theta=1000000.0,
    ),
    # GQA 6:2, tied embeddings (the head is still stored, see QWEN2_AUDIO.md)
    "gqa3": Shape(
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=160,
        d_model=64,
        encoder_attention_heads=2,
        encoder_layers=1,
        tie_word_embeddings=True,
    ),
}


def _config_dict(shape: Shape, audio_token_index: int, style: str, special: dict) -> dict:
    text = {
        "model_type": "qwen2",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.rms_norm_eps,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "bos_token_id": special["endoftext"],
        "eos_token_id": special["endoftext"],
        **shape.extra_text,
    }
    if style == "v4":
        text["rope_theta"] = shape.rope_theta
    else:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.rope_theta}
    audio = {
        "model_type": "qwen2_audio_encoder",
        "d_model": shape.d_model,
        "encoder_layers": shape.encoder_layers,
        "encoder_attention_heads": shape.encoder_attention_heads,
        "encoder_ffn_dim": shape.encoder_ffn_dim,
        "num_mel_bins": shape.num_mel_bins,
        "max_source_positions": 1500,
    }
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "model_type": "qwen2_audio",
        "audio_token_index": audio_token_index,
        "audio_config": audio,
        "text_config": text,
        "torch_dtype": "float32",
    }


def _hub_name(key: str) -> str:
    """transformers 5 state-dict names -> the hub's names."""
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    key = key.removeprefix("model.")
    if key.startswith("language_model."):
        return "language_model.model." + key.removeprefix("language_model.")
    return key


def build_checkpoint(
    path: Path,
    shape: Shape | str = "mha",
    *,
    seed: int = 0,
    style: str = "v4",
    shards: int = 1,
    with_tokenizer_json: bool = True,
    init_std: float = 0.3,
    chat_template: str = "chat_template.json",
    generation_config: dict | None = None,
    save_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random checkpoint folder and return it.

    `init_std` is larger than transformers' 0.02 so random logits have clear top-1 margins and
    greedy decoding is not decided by rounding noise.
    """
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    if isinstance(shape, str):
        shape = SHAPES[shape]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = build_tokenizer(path, with_tokenizer_json=with_tokenizer_json)
    write_preprocessor_config(path, shape.num_mel_bins)
    config = _config_dict(shape, special["audio"], style, special)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    gen = generation_config or {
        "eos_token_id": [special["im_end"], special["endoftext"]],
        "pad_token_id": special["endoftext"],
    }
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _write_chat_template(path, chat_template)

    torch.manual_seed(seed)
    hf_config = Qwen2AudioConfig(
        audio_config=config["audio_config"],
        text_config={**config["text_config"], "initializer_range": init_std},
        audio_token_index=special["audio"],
    )
    hf_config.initializer_range = init_std
    model = Qwen2AudioForConditionalGeneration(hf_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0, init_std) if name.endswith("bias") else p.uniform_(0.8, 1.2)
            elif "embed_positions" not in name:
                p.normal_(0.0, init_std)
    state = {_hub_name(k): v.to(save_dtype).contiguous() for k, v in model.state_dict().items()}
    if shape.tie_word_embeddings:
        state["language_model.lm_head.weight"] = state[
            "language_model.model.embed_tokens.weight"
        ].clone()
    _save_weights(path, state, shards)
    return path


def _write_chat_template(path: Path, where: str) -> None:
    from ..prompt import DEFAULT_CHAT_TEMPLATE

    if where == "chat_template.json":
        (path / "chat_template.json").write_text(
            json.dumps({"chat_template": DEFAULT_CHAT_TEMPLATE})
        )
    elif where == "chat_template.jinja":
        (path / "chat_template.jinja").write_text(DEFAULT_CHAT_TEMPLATE)
    elif where == "tokenizer_config.json":
        cfg_path = path / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = DEFAULT_CHAT_TEMPLATE
        cfg_path.write_text(json.dumps(cfg, indent=2))
    elif where != "none":
        raise ValueError(where)


def _save_weights(path: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    metadata = {"format": "pt"}
    if shards == 1:
        save_file(state, str(path / "model.safetensors"), metadata=metadata)
        return
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(path / name), metadata=metadata)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


BENCH_SHAPE = Shape(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    d_model=512,
    encoder_layers=6,
    encoder_attention_heads=8,
    encoder_ffn_dim=2048,
    num_mel_bins=128,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    max_position_embeddings=32768,
)

SHAPE_7B = Shape(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    vocab_size=156032,
    d_model=1280,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    num_mel_bins=128,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=8192,
)


def write_streamed(path: Path, shape: Shape, *, shards: int = 10, std: float = 0.02) -> Path:
    """Random bf16 weights with `shape`, one shard in memory at a time (no transformers)."""
    from ..config import ModelConfig
    from ..model.loader import whisper_sinusoids
    from ..model.qwen2_audio import Qwen2AudioForConditionalGeneration

    path.mkdir(parents=True, exist_ok=True)
    special = build_tokenizer(path)
    write_preprocessor_config(path, shape.num_mel_bins)
    config = _config_dict(shape, special["audio"], "v4", special)
    config["torch_dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config, indent=2))
    gen = {"eos_token_id": [special["im_end"], special["endoftext"]], "pad_token_id": 0}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    _write_chat_template(path, "chat_template.json")

    with torch.device("meta"):  # our modules carry the hub's names: the key list and shapes
        layout = Qwen2AudioForConditionalGeneration(ModelConfig.from_dir(path)).state_dict()
    total = sum(t.numel() * 2 for t in layout.values())
    per_shard = -(-total // shards)
    gen_ = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    part: dict[str, torch.Tensor] = {}
    part_bytes, index = 0, 0

    def flush() -> None:
        nonlocal part, part_bytes, index
        index += 1
        name = f"model-{index:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        print(f"  {name}: {part_bytes / 2**30:.2f} GiB", flush=True)
        part, part_bytes = {}, 0

    for key, meta in layout.items():
        if key.endswith("embed_positions.weight"):
            t = whisper_sinusoids(*meta.shape)
        elif "norm" in key and key.endswith("weight"):
            t = torch.empty(meta.shape).uniform_(0.8, 1.2, generator=gen_)
        elif "norm" in key:
            t = torch.zeros(meta.shape)
        else:
            t = torch.empty(meta.shape).normal_(0.0, std, generator=gen_)
        part[key] = t.to(torch.bfloat16)
        part_bytes += meta.numel() * 2
        if part_bytes >= per_shard and index < shards - 1:
            flush()
    flush()
    if index != shards:  # the names promised `shards` files: say how many there are
        renames = {}
        for i in range(1, index + 1):
            old = f"model-{i:05d}-of-{shards:05d}.safetensors"
            renames[old] = f"model-{i:05d}-of-{index:05d}.safetensors"
            (path / old).rename(path / renames[old])
        weight_map = {k: renames[v] for k, v in weight_map.items()}
    index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))
    return path
