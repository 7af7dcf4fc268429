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
from pathlib import Path

import torch

from qwen_audio.bench.checkpoint import BENCH_SHAPE, SHAPE_7B, build_checkpoint, write_streamed

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
