"""The bundled demo model's held-out transcription WER as stored (fp16), in bf16, int8 and int4.

Renders only the 400 held-out sentences of the demo data (seed 0, scale 1: the same clips as
`qwen-audio train-demo`'s evaluation; needs espeak-ng), then runs `qwen-audio eval run`'s
generic WER task once per precision and prints one line each and a JSON summary.

    python benchmarks/demo_quantized_wer.py [WORK]     # WORK defaults to /tmp/demo-heldout
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qwen_audio.config import default_model
from qwen_audio.demo import data, tasks
from qwen_audio.eval.runner import run_eval


def heldout_rows(work: Path) -> Path:
    rows_path = work / "eval" / "demo_asr_heldout.jsonl"
    if rows_path.exists():
        return rows_path
    jobs = data.plan(seed=0, scale=1.0).groups["speech/heldout"]
    data.render_all(jobs, work, workers=2)
    rows = [
        tasks.eval_row(f"../{j.path}", tasks.EVAL_ASR_PROMPT, j.speech.text, "demo_asr_heldout")
        for j in jobs
    ]
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows_path


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/demo-heldout")
    rows = heldout_rows(work)
    summary = {}
    variants = (
        ("stored (fp16 weights)", "auto", None),
        ("bfloat16", "bfloat16", None),
        ("int8", "auto", "int8"),
        ("int4", "auto", "int4"),
    )
    for label, dtype, quantize in variants:
        result = run_eval(
            "generic",
            str(rows),
            str(work / f"run-{quantize or dtype}"),
            model=str(default_model()),
            batch_size=32,
            prompt_override="{prompt}",
            prompt_variant="instruct",
            dtype=dtype,
            quantize=quantize,
            metric="wer",
            language="en",
            progress=False,
        )
        summary[label] = result.metrics
        print(label, json.dumps(result.metrics), flush=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
