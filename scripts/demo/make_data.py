"""Generate the demo model's data: `python scripts/demo/make_data.py OUT_DIR [--seed 0] [--scale 1]`.

See ``qwen_audio/demo/data.py`` for what is made. Needs espeak-ng on PATH.
"""

from __future__ import annotations

import argparse
import json

from qwen_audio.demo.data import MAX_WORKERS, generate


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="folder to write (audio, train/valid/eval JSONL, manifest)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every count (0.01: tiny)")
    ap.add_argument("--workers", type=int, default=MAX_WORKERS, help=f"at most {MAX_WORKERS}")
    args = ap.parse_args(argv)
    manifest = generate(args.out_dir, seed=args.seed, scale=args.scale, workers=args.workers)
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
