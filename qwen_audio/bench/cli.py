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

from ..config import MODEL_HELP, default_model

ALL_WORKLOADS = "ttft_5s,ttft_30s,decode,throughput,third_turn"

# (key, label, unit, lower is better)
ROWS = [
    ("ttft_5s", "TTFT, 5 s clip + question", "s", True),
    ("ttft_30s", "TTFT, 30 s clip + question", "s", True),
    ("ttft_third_turn", "TTFT, 3rd voice-chat turn", "s", True),
    ("decode_tok_s", "decode, batch 1", "tok/s", False),
    ("prefill_tok_s", "text prompt prefill", "tok/s", False),
    ("throughput_tok_s", "16 requests x 64 tokens", "tok/s", False),
    ("peak_rss_mb", "peak RSS", "MiB", True),
]
# Workloads for a 7B model on a CPU: transformers' bf16 takes minutes per TTFT there.
SEVEN_B_WORKLOADS = "ttft_5s,decode,prefill"


def add_bench_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the engine (optionally against transformers)")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument(
        "--compare",
        default=None,
        help="peers, comma-separated: transformers, llama.cpp (decoder only, Q8_0/Q4_0 next to "
        "our int8/int4 and bf16 next to our bf16)",
    )
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--quantize", default=None, help="also run ours quantized: int8, int4 or int8,int4"
    )
    p.add_argument(
        "--workloads",
        default=ALL_WORKLOADS,
        help=f"comma-separated; for 7B on a CPU use {SEVEN_B_WORKLOADS}",
    )
    p.add_argument("--repeats", type=int, default=3, help="TTFT runs (the best is kept)")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=800, help="the prefill workload's length")
    p.add_argument("--llama-cpp", default=None, help="folder with llama-bench and llama-quantize")
    p.add_argument("--gguf-dir", default=None, help="where the GGUF files go (reused if there)")
    p.add_argument(
        "--llama-cpp-formats",
        default="bf16,q8_0,q4_0",
        help="llama.cpp files to run (q8_0 / q4_0 only next to our int8 / int4)",
    )
    p.add_argument("--quality-prompts", type=int, default=6, help="prompts of --quality")
    p.add_argument("--quality-tokens", type=int, default=32, help="greedy tokens of --quality")
    p.add_argument(
        "--quality",
        action="store_true",
        help="also measure bf16 (and int8) against float32: logits cosine, greedy agreement",
    )
    p.set_defaults(func=run_bench)


def worker(framework: str, args, quantize: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "qwen_audio.bench.worker", "--framework", framework]
    cmd += ["--model", args.model, "--dtype", args.dtype, "--device", args.device]
    cmd += ["--workloads", args.workloads, "--repeats", str(args.repeats)]
    cmd += ["--decode-tokens", str(args.decode_tokens), "--prompt-tokens", str(args.prompt_tokens)]
    if quantize:
        cmd += ["--quantize", quantize]
    label = framework + (f" ({quantize})" if quantize else "")
    print(f"running {label} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"{label} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_bandwidth_gbs(size_mb: int = 1024, repeats: int = 5) -> float:
    """Best-of-N read bandwidth of summing a buffer much larger than the caches (float32: its
    sum streams at memory speed on every instruction set; a bf16 sum is emulated on AVX2)."""
    import torch

    buf = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    buf.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - start)
    return buf.numel() * 4 / best / 1e9


def describe_machine() -> str:
    """CPU model, the flags that decide our kernels, cores, torch: printed with every number."""
    import torch

    from .. import kernels

    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wanted = (
        "avx2",
        "fma",
        "f16c",
        "avx_vnni",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "amx_bf16",
        "asimd",
    )
    flags = " ".join(f for f in wanted if f in kernels.cpu_flags()) or "none of note"
    return (
        f"{model}, {os.cpu_count()} cores, flags: {flags}; kernels: {kernels.selected_isa()}; "
        f"torch {torch.__version__}"
    )


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def ratio(ours: float | None, ref: float | None) -> float | None:
    if ours is None or ref is None or ref == 0:
        return None
    return ours / ref


def llama_cpp_files(args, methods: list[str]) -> dict[str, object]:
    """The GGUF files of the same decoder (written and quantized once, then reused): bf16, and
    Q8_0 / Q4_0 next to our int8 / int4."""
    from pathlib import Path

    import torch

    from ..loading import read_packed_layout
    from . import llama_cpp

    quantize = llama_cpp.find_tool("llama-quantize", args.llama_cpp)
    if llama_cpp.find_tool("llama-bench", args.llama_cpp) is None or quantize is None:
        raise RuntimeError("llama.cpp's llama-bench / llama-quantize not found: see --llama-cpp")
    model = Path(args.model)
    folder = Path(args.gguf_dir or Path(os.environ.get("TMPDIR", "/tmp")) / f"{model.name}-gguf")
    folder.mkdir(parents=True, exist_ok=True)
    bf16 = folder / "model-bf16.gguf"
    wanted = args.llama_cpp_formats.split(",")
    quantized = {
        qtype: folder / f"model-{qtype}.gguf"
        for method, qtype in (("int8", "q8_0"), ("int4", "q4_0"))
        if method in methods and qtype in wanted
    }
    # the bf16 file is written only when it is run or a quantized file must be made from it
    needs_bf16 = "bf16" in wanted or not all(f.exists() for f in quantized.values())
    if needs_bf16 and not bf16.exists():
        if read_packed_layout(model):
            raise RuntimeError(
                f"{model} is quantized: write llama.cpp's files from the unquantized checkpoint "
                f"(or put model-q8_0.gguf / model-q4_0.gguf in {folder})"
            )
        print(f"writing {bf16} ...", file=sys.stderr, flush=True)
        llama_cpp.write_gguf(model, bf16)
    files = {"llama.cpp bf16": bf16} if "bf16" in wanted else {}
    for qtype, out in quantized.items():
        if not out.exists():
            print(f"quantizing {out} ...", file=sys.stderr, flush=True)
            llama_cpp.quantize(quantize, bf16, out, qtype, torch.get_num_threads())
        files[f"llama.cpp {qtype}"] = out
    return files


def llama_cpp_run(args, label: str, path) -> dict:
    import torch

    from . import llama_cpp

    print(f"running {label} ...", file=sys.stderr, flush=True)
    return llama_cpp.bench(
        llama_cpp.find_tool("llama-bench", args.llama_cpp),
        path,
        threads=torch.get_num_threads(),
        prompt=args.prompt_tokens,
        gen=args.decode_tokens,
        reps=max(1, args.repeats),
    )


def run_bench(args) -> int:
    from ..model.loader import resolve_model_path

    # The workers and peers need a folder: the default model, a hub id from the cache, or --model.
    args.model = str(resolve_model_path(default_model(args.model)))
    methods = [m for m in (args.quantize or "").split(",") if m]
    peers = [c for c in (args.compare or "").split(",") if c]
    unknown = [m for m in methods if m not in ("int8", "int4")]
    unknown += [c for c in peers if c not in ("transformers", "llama.cpp")]
    if unknown:
        raise ValueError(f"unknown --quantize / --compare value(s): {', '.join(unknown)}")
    # Each of ours next to its peer in time: this VM's read bandwidth drifts by 2x over minutes,
    # so every run gets its own bandwidth measurement, taken right before it.
    gguf = llama_cpp_files(args, methods) if "llama.cpp" in peers else {}
    plan = [("ours", lambda: worker("ours", args))]
    if "llama.cpp bf16" in gguf:
        plan.append(
            (
                "llama.cpp bf16",
                lambda: llama_cpp_run(args, "llama.cpp bf16", gguf["llama.cpp bf16"]),
            )
        )
    if "transformers" in peers:
        plan.append(("transformers", lambda: worker("transformers", args)))
    for method, qtype in (("int8", "q8_0"), ("int4", "q4_0")):
        if method in methods:
            plan.append((f"ours_{method}", lambda m=method: worker("ours", args, m)))
            label = f"llama.cpp {qtype}"
            if label in gguf:
                plan.append((label, lambda lb=label: llama_cpp_run(args, lb, gguf[lb])))
    results = {}
    for label, run in plan:
        bandwidth_before = memory_bandwidth_gbs()
        results[label] = run()
        results[label]["bandwidth_gbs"] = bandwidth_before
    bandwidth = memory_bandwidth_gbs()

    columns = list(results)
    header = f"{'workload':32}" + "".join(f"{c:>16}" for c in columns)
    if "transformers" in results:
        header += "".join(f"{c + '/hf':>16}" for c in columns if c != "transformers")
    print(header)
    ratios: dict[str, dict[str, float]] = {}
    for key, label, unit, _ in ROWS + [("bandwidth_gbs", "read bandwidth before", "GB/s", False)]:
        if all(results[c].get(key) is None for c in columns):
            continue  # a workload that was not run
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

    peer_ratios = {}
    for ours, peer in (
        ("ours", "llama.cpp bf16"),
        ("ours_int8", "llama.cpp q8_0"),
        ("ours_int4", "llama.cpp q4_0"),
    ):
        if ours in results and peer in results:
            for key in ("decode_tok_s", "prefill_tok_s"):
                r = ratio(results[ours].get(key), results[peer].get(key))
                peer_ratios.setdefault(f"{ours} / {peer}", {})[key] = r
            shown = peer_ratios[f"{ours} / {peer}"]
            print(
                f"{ours} / {peer}: decode {_fmt_ratio(shown['decode_tok_s'])}, "
                f"{args.prompt_tokens}-token prefill {_fmt_ratio(shown['prefill_tok_s'])}"
            )

    # bytes read per decoded token: ours and llama.cpp's from their weights (llama.cpp keeps a
    # Q4_0 file's head in Q6_K); transformers reads what our bf16 run reads
    same_bytes = {"transformers": "ours"}
    roofline = {}
    for c in columns:
        per_token = results[c].get("weight_bytes_per_token")
        if per_token is None and same_bytes.get(c) in results:
            per_token = results[same_bytes[c]].get("weight_bytes_per_token")
        if per_token and results[c].get("decode_tok_s"):
            own = results[c].get("bandwidth_gbs", bandwidth)
            limit = own * 1e9 / per_token
            roofline[c] = {
                "roofline_tok_s": limit,
                "fraction": results[c]["decode_tok_s"] / limit,
                "weight_mb_per_token": per_token / 2**20,
            }
            print(
                f"decode roofline ({c}): {own:.1f} GB/s / {per_token / 2**20:.0f} MiB "
                f"per token = {limit:.1f} tok/s; achieved {roofline[c]['fraction']:.0%}"
            )
    quality = {}
    if args.quality:
        from .quality import measure_quality

        variants = [("bfloat16", "bfloat16", None)]
        variants += [(method, "bfloat16", method) for method in methods]
        quality = measure_quality(
            args.model, variants, prompts=args.quality_prompts, tokens=args.quality_tokens
        )
        for label, q in quality.items():
            print(
                f"quality vs float32 ({label}): logits cosine mean {q['logits_cosine_mean']:.5f} "
                f"(min {q['logits_cosine_min']:.5f}), first token {q['first_token_agreement']:.0%}, "
                f"greedy tokens identical {q['greedy_leading_agreement']:.0%} of {args.quality_tokens}"
            )
    machine = describe_machine()
    print(f"machine: {machine}; dtype {args.dtype}; lower-is-better rows: TTFT and RSS")
    print(
        json.dumps(
            {
                "results": results,
                "ratios_vs_transformers": ratios,
                "ratios_vs_llama_cpp": peer_ratios,
                "memory_bandwidth_gbs": bandwidth,
                "roofline": roofline,
                "quality_vs_float32": quality,
                "machine": machine,
                "dtype": args.dtype,
            }
        )
    )
    return 0
