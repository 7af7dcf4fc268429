"""accelerate launch configs shipped with the package (`python -m qwen_audio.train config NAME`
prints the path). Set the process count with `--num_processes N` on the command line."""

from __future__ import annotations

from pathlib import Path

ACCELERATE_CONFIGS = {
    "ddp": "ddp.yaml",  # data parallel; gloo on CPU, NCCL on GPUs
    "fsdp": "fsdp.yaml",  # FSDP2, decoder and encoder layers sharded
    "zero2": "deepspeed_zero2.yaml",  # DeepSpeed ZeRO-2: optimizer state and gradients sharded
    "zero3": "deepspeed_zero3.yaml",  # DeepSpeed ZeRO-3: weights sharded too
}


def config_path(name: str) -> Path:
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(ACCELERATE_CONFIGS)}")
    return Path(__file__).with_name(ACCELERATE_CONFIGS[name])
