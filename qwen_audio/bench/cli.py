"""`qwen-audio bench`: our engine against transformers on the same checkpoint, in one run.

Each framework runs in a fresh subprocess, one after the other (never at the same time, so they
do not share the cores), and the table shows ratios. The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import torch

from .workloads import DECODE_TOKENS  # noqa: F401  (documented in the table footer)

ALL_WORKLOADS = "ttft_5s,ttft_30s,decode,throughput,third_turn"

# (key, label, unit, lower is better)
ROWS = [
    ("ttft_5s", "TTFT, 5 s clip + question", "s", True),
    ("ttft_30s", "TTFT, 30 s clip + question", "s", True),
    ("ttft_third_turn", "TTFT, 3rd voice-chat turn", "s", True),
    ("decode_tok_s", "decode, batch 1", "tok/s", False),
    ("throughput_tok_s", "16 requests x 64 tokens", "tok/s", False),
    ("peak_rss_mb", "peak RSS", "MiB", True),
]


def add_bench_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the engine (optionally against transformers)")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--compare", choices=["transformers"], default=None)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also run ours with int8")
    p.add_argument("--workloads", default=ALL_WORKLOADS)
    p.add_argument(
        "--quality",
        action="store_true",
        help="also measure bf16 (and int8) against float32: logits cosine, greedy agreement",
    )
    p.set_defaults(func=run_bench)


def worker(framework: str, args, quantize: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "qwen_audio.bench.worker", "--framework", framework]
    cmd += ["--model", args.model, "--dtype", args.dtype, "--device", args.device]
    cmd += ["--workloads", args.workloads]
    if quantize:
        cmd += ["--quantize", quantize]
    label = framework + (f" ({quantize})" if quantize else "")
    print(f"running {label} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{label} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_bandwidth_gbs(size_mb: int = 1024, repeats: int = 5) -> float:
    """Best-of-N read bandwidth of summing a buffer much larger than the caches."""
    buf = torch.ones(size_mb * 2**20 // 2, dtype=torch.bfloat16)
    buf.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return buf.numel() * 2 / best / 1e9


def ratio(ours: float | None, ref: float | None) -> float | None:
    if ours is None or ref is None or ref == 0:
        return None
    return ours / ref


def run_bench(args) -> int:
    results = {"ours": worker("ours", args)}
    if args.quantize:
        results["ours_int8"] = worker("ours", args, args.quantize)
    if args.compare:
        results["transformers"] = worker("transformers", args)
    bandwidth = memory_bandwidth_gbs()

    columns = list(results)
    header = f"{'workload':32}" + "".join(f"{c:>16}" for c in columns)
    if "transformers" in results:
        header += "".join(f"{c + '/hf':>16}" for c in columns if c != "transformers")
    print(header)
    ratios: dict[str, dict[str, float]] = {}
    for key, label, unit, _ in ROWS:
        line = f"{label + ' (' + unit + ')':32}"
        for c in columns:
            v = results[c].get(key)
            line += f"{v:>16.3f}" if v is not None else f"{'-':>16}"
        if "transformers" in results:
            for c in columns:
                if c == "transformers":
                    continue
                r = ratio(results[c].get(key), results["transformers"].get(key))
                ratios.setdefault(c, {})[key] = r
                line += f"{r:>15.2f}x" if r is not None else f"{'-':>16}"
        print(line)

    roofline = {}
    for c in columns:
        per_token = results[c].get("weight_bytes_per_token")
        if per_token and results[c].get("decode_tok_s"):
            limit = bandwidth * 1e9 / per_token
            roofline[c] = {
                "roofline_tok_s": limit,
                "fraction": results[c]["decode_tok_s"] / limit,
                "weight_mb_per_token": per_token / 2**20,
            }
            print(
                f"decode roofline ({c}): {bandwidth:.1f} GB/s / {per_token / 2**20:.0f} MiB "
                f"per token = {limit:.1f} tok/s; achieved {roofline[c]['fraction']:.0%}"
            )
    quality = {}
    if args.quality:
        from .quality import TOKENS, measure_quality

        variants = [("bfloat16", "bfloat16", None)]
        if args.quantize:
            variants.append(("int8", "bfloat16", args.quantize))
        quality = measure_quality(args.model, variants)
        for label, q in quality.items():
            print(
                f"quality vs float32 ({label}): logits cosine mean {q['logits_cosine_mean']:.5f} "
                f"(min {q['logits_cosine_min']:.5f}), first token {q['first_token_agreement']:.0%}, "
                f"greedy tokens identical {q['greedy_leading_agreement']:.0%} of {TOKENS}"
            )
    machine = f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"machine: {machine}; dtype {args.dtype}; lower-is-better rows: TTFT and RSS")
    print(
        json.dumps(
            {
                "results": results,
                "ratios_vs_transformers": ratios,
                "memory_bandwidth_gbs": bandwidth,
                "roofline": roofline,
                "quality_vs_float32": quality,
                "machine": machine,
                "dtype": args.dtype,
            }
        )
    )
    return 0
