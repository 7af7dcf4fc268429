"""Write a random-weight benchmark checkpoint in the hub layout. Only speed and memory mean anything.

    python benchmarks/make_checkpoint.py /tmp/qwen-audio-bench               # --preset 0.5b
    python benchmarks/make_checkpoint.py /tmp/qwen-audio-7b --preset 7b

`0.5b`: a Qwen2-0.5B-sized decoder (896 hidden, 24 layers, 14 heads / 2 KV heads, 4864 MLP,
151936 vocabulary, tied embeddings) behind a Whisper-base-sized encoder (512 wide, 6 layers,
8 heads, 128 mel bins), built with transformers (dev extra).

`7b`: Qwen2-Audio-7B's exact shapes (hub config: 32 x 4096 decoder, 11008 MLP, 32 heads, 156032
vocabulary, untied head; 32-layer 1280-wide encoder with 20 heads, 128 mel bins): 15.6 GiB of
bf16 in 10 shards, written shard by shard (a few GiB of memory, about two minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.fixtures.checkpoints import (  # noqa: E402
    Shape,
    _config_dict,
    _write_chat_template,
    build_checkpoint,
)
from tests.fixtures.tokenizer_builder import (  # noqa: E402
    build_tokenizer,
    write_preprocessor_config,
)

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
    from safetensors.torch import save_file

    from qwen_audio.config import ModelConfig
    from qwen_audio.model.loader import whisper_sinusoids
    from qwen_audio.model.qwen2_audio import Qwen2AudioForConditionalGeneration

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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("output", nargs="?", default=None, help="folder to write")
    ap.add_argument("--preset", choices=["0.5b", "7b"], default="0.5b")
    args = ap.parse_args()
    if args.preset == "7b":
        out = Path(args.output or "/tmp/qwen-audio-7b")
        write_streamed(out, SHAPE_7B)
    else:
        out = Path(args.output or "/tmp/qwen-audio-bench")
        build_checkpoint(out, BENCH_SHAPE, init_std=0.02, seed=0, save_dtype=torch.bfloat16)
    print(out)
