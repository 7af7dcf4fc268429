"""Write the random-weight benchmark checkpoint of the engine issue (hub layout).

A Qwen2-0.5B-sized decoder (896 hidden, 24 layers, 14 heads / 2 KV heads, 4864 MLP, 151936 vocab,
tied embeddings) behind a Whisper-base-sized encoder (512 wide, 6 layers, 8 heads, 128 mel bins).
Weights are random, so only speed and memory mean anything. Needs transformers (dev extra).

    python benchmarks/make_checkpoint.py /tmp/qwen-audio-bench
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.fixtures.checkpoints import Shape, build_checkpoint  # noqa: E402

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

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/qwen-audio-bench")
    build_checkpoint(out, BENCH_SHAPE, init_std=0.02, seed=0, save_dtype=torch.bfloat16)
    print(out)
