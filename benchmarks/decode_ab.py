"""Batch-1 decode against a peer, alternating, several rounds: a ratio that survives noise.

This VM's memory bandwidth drifts between runs (30-80 GB/s measured minutes apart), so one run
of each side, as `qwen-audio bench` does, can be off by 20% either way. Here our model stays
loaded and each round times our decode (the 5 s clip + question of `bench`, 32 tokens after the
first) right next to the peer's on the same model, a float32 read rate beside them; the median
of the per-round ratios is the figure to quote. Peers: `llama-bench -n 32` on a GGUF of the
same decoder, or transformers (bf16, loaded in this process, timed as `bench` times it).

    python benchmarks/decode_ab.py --model /tmp/qwen-audio-7b-int4 \
        --gguf /tmp/qwen-audio-7b-gguf/model-q4_0.gguf --llama-bench BUILD/bin/llama-bench
    python benchmarks/decode_ab.py --model /tmp/qwen-audio-bench --dtype bfloat16 \
        --peer transformers
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from qwen_audio import LLM, SamplingParams
from qwen_audio.bench import llama_cpp
from qwen_audio.bench import workloads as W


def read_rate(buffer: torch.Tensor) -> float:
    """GB/s of a float32 sum over a buffer far larger than the caches."""
    start = time.perf_counter()
    buffer.sum()
    return buffer.numel() * 4 / (time.perf_counter() - start) / 1e9


def our_decode(llm: LLM, tokens: int, seconds: float = 5.0) -> float:
    """Tokens per second after the first, as `qwen-audio bench` measures it, after a clip of
    `seconds` and a question."""
    conv = [W.question_turn(W.clip(seconds, 21))]
    params = SamplingParams(max_tokens=tokens + 1, temperature=0.0, ignore_eos=True)
    times: list[float] = []
    for delta in llm.stream_chat(conv, params):
        times += [time.perf_counter()] * len(delta.token_ids)
    return (len(times) - 1) / (times[-1] - times[0])


def peer_decode(args: argparse.Namespace, threads: int) -> Callable[[], float]:
    """A function that times one round of the peer's decode, in tokens per second."""
    seconds = 30.0 if args.long else 5.0
    if args.peer == "transformers":
        from qwen_audio.bench.worker import Reference

        reference = Reference(args.model, "bfloat16", "cpu")
        conv = [W.question_turn(W.clip(seconds, 21))]
        reference.decode_rate(conv, 4)  # warm up
        return lambda: reference.decode_rate(conv, args.tokens + 1)
    depth = 780 if args.long else 0
    return lambda: llama_cpp.bench(
        args.llama_bench,
        Path(args.gguf),
        threads=threads,
        prompt=0,
        gen=args.tokens,
        reps=1,
        depth=depth,
    )["decode_tok_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--quantize", default=None, help="int8 or int4, for an unquantized --model")
    p.add_argument("--dtype", default="auto", help="our dtype (transformers runs bf16)")
    p.add_argument("--peer", choices=["llama.cpp", "transformers"], default="llama.cpp")
    p.add_argument("--gguf", help="llama.cpp's file at the same bits")
    p.add_argument("--llama-bench", help="llama.cpp's llama-bench program")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument(
        "--long",
        action="store_true",
        help="decode after a 30 s clip (~780 tokens of context; llama-bench -d 780)",
    )
    args = p.parse_args()
    if args.peer == "llama.cpp" and not (args.gguf and args.llama_bench):
        p.error("--peer llama.cpp needs --gguf and --llama-bench")

    threads = torch.get_num_threads()
    llm = LLM(args.model, dtype=args.dtype, quantize=args.quantize)
    our_decode(llm, 4)  # warm up
    peer = peer_decode(args, threads)
    buffer = torch.ones(1 << 29)  # 2 GiB
    ratios = []
    for round_ in range(args.rounds):
        bandwidth = read_rate(buffer)
        ours = our_decode(llm, args.tokens, 30.0 if args.long else 5.0)
        theirs = peer()
        ratios.append(ours / theirs)
        print(
            f"round {round_ + 1}: read {bandwidth:.1f} GB/s, ours {ours:.2f} tok/s, "
            f"{args.peer} {theirs:.2f} tok/s, ratio {ours / theirs:.2f}",
            flush=True,
        )
    print(
        f"median ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
