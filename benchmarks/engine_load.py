"""The engine under many users (issue 19's targets), on one checkpoint, one engine per process.

    PYTHONPATH=. python benchmarks/engine_load.py --model /tmp/qwen-audio-bench --dtype bfloat16

Prints one JSON object. It drives `LLMEngine` through `add_request` / `step` / `abort` / `stats`
only, so the same file measures an older engine from its own checkout (PYTHONPATH=that checkout)
and the ratios can be taken between two runs on the same machine:
- concurrency: requests with max_tokens 1024 and short answers (ended after `--answer-tokens`
  by an abort, as a stop string ends them) under a KV budget that worst-case reservation fills
  with 8 of them: most requests running at once, failed requests, KV bytes held at most;
- latency: 16 streams decode, then four 30 s clips arrive at once; the inter-token gaps of the
  16 streams from 16 steps before the arrival to 16 steps after the clips' first tokens, median
  and p99 (`--chunk` sets max_prefill_tokens: smaller chunks, smaller gaps, later clips; by
  default the engine's own chunk sizes, smaller while streams decode);
- shared prefix: a system prompt and the same 30 s clip asked 8 questions, sent together: prompt
  tokens computed / prompt tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from qwen_audio import LLM, SamplingParams
from qwen_audio.bench import workloads as W
from qwen_audio.engine.engine import EngineConfig

QUESTIONS = [
    "What can you hear?",
    "How long is it?",
    "Is there speech?",
    "Is it loud or quiet?",
    "Describe the pitch.",
    "Is it music?",
    "What is the mood?",
    "Any background noise?",
]
SYSTEM = "You are a careful audio analyst. Answer in one short sentence, then stop. " * 3


def conv(seconds: float, seed: int, text: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [W.question_turn(W.clip(seconds, seed), text)]


def request(llm: LLM, rid: str, c: list[dict], max_tokens: int):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    req, _ = llm.make_request(llm.renderer.render_chat(c), params, rid)
    return req


def kv_bytes_per_token(llm: LLM) -> int:
    t = llm.model.config.text
    elem = torch.empty((), dtype=llm.model.dtype).element_size()  # the activations' dtype
    return t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * elem


def concurrency(model: str, dtype: str, requests: int, answer_tokens: int) -> dict:
    probe = LLM(model, dtype=dtype, engine_config=EngineConfig(kv_budget_bytes=1 << 30))
    prompt = len(probe.renderer.render_chat(conv(1.0, 0, QUESTIONS[0])).token_ids)
    budget = 8 * (prompt + 1024) * kv_bytes_per_token(probe)
    del probe
    llm = LLM(model, dtype=dtype, engine_config=EngineConfig(kv_budget_bytes=budget))
    engine = llm.engine
    ids = [f"c{i}" for i in range(requests)]
    for i, rid in enumerate(ids):
        # a different clip each: no prefix shared beyond the chat template
        engine.add_request(request(llm, rid, conv(1.0, i, QUESTIONS[i % 8]), 1024))
    counts = {rid: 0 for rid in ids}
    done: set[str] = set()
    failed = 0
    most_running = 0
    kv_most = 0
    start = time.perf_counter()
    while len(done) < requests:
        for out in engine.step():
            if out.finished:
                done.add(out.request_id)
                failed += out.finish_reason == "abort" and counts[out.request_id] < answer_tokens
                continue
            counts[out.request_id] += len(out.new_token_ids)
            if counts[out.request_id] == answer_tokens:
                engine.abort(out.request_id)  # the answer is complete (a stop string)
        stats = engine.stats()
        most_running = max(most_running, stats["running"])
        kv_most = max(kv_most, stats["kv_used_bytes"])
    seconds = time.perf_counter() - start
    return {
        "kv_budget_bytes": budget,
        "requests": requests,
        "most_running": most_running,
        "failed": int(failed),
        "kv_used_bytes_max": kv_most,
        "kv_pool_bytes": getattr(getattr(engine, "pool", None), "nbytes", None),
        "preemptions": engine.stats().get("preemptions"),
        "seconds": seconds,
        "answer_tok_s": requests * answer_tokens / seconds,
    }


def latency(model: str, dtype: str, streams: int, clips: int, chunk: int | None) -> dict:
    config = EngineConfig(max_prefill_tokens=chunk) if chunk else None
    llm = LLM(model, dtype=dtype, engine_config=config)
    engine = llm.engine
    for i in range(streams):
        engine.add_request(request(llm, f"s{i}", conv(2.0, 100 + i, QUESTIONS[i % 8]), 4096))
    last: dict[str, float] = {}
    gaps: list[tuple[int, float]] = []  # (step, gap)
    clip_ids = {f"clip{i}" for i in range(clips)}
    first_token: dict[str, float] = {}
    step = 0
    arrival_step = end_step = None
    while end_step is None or step < end_step:
        outs = engine.step()
        now = time.perf_counter()
        step += 1
        for out in outs:
            rid = out.request_id
            if rid in clip_ids:
                first_token.setdefault(rid, now)
            elif rid in last:
                gaps.append((step, now - last[rid]))
            if rid not in clip_ids:
                last[rid] = now
        if arrival_step is None and len(last) == streams and len(gaps) >= 16 * streams:
            # every stream has decoded 16 tokens: the clips arrive at once
            arrival_step, arrival = step, time.perf_counter()
            for i in range(clips):
                engine.add_request(request(llm, f"clip{i}", conv(30.0, 200 + i, "Describe."), 8))
        if end_step is None and len(first_token) == clips:
            end_step = step + 16  # and 16 steps after the clips' first tokens
    for rid in list(last) + list(clip_ids):
        engine.abort(rid)
    engine.step()
    window = sorted(g for s, g in gaps if s > arrival_step - 16)  # 16 steps before arrival on
    before = [g for s, g in gaps if s <= arrival_step]
    median = statistics.median(window)
    p99 = float(np.percentile(window, 99))
    return {
        "streams": streams,
        "clips": clips,
        "max_prefill_tokens": engine.config.max_prefill_tokens,
        "prefill_tokens_while_decoding": getattr(
            engine.config,
            "prefill_tokens_while_decoding",
            None,  # absent in older engines
        ),
        "encoder_step_seconds": getattr(engine.config, "encoder_step_seconds", None),
        "gaps": len(window),
        "gap_median_s": median,
        "gap_p99_s": p99,
        "gap_max_s": window[-1],
        "p99_over_median": p99 / median,
        "gap_median_before_arrival_s": statistics.median(before),
        "clips_ttft_s": max(first_token.values()) - arrival,
    }


def shared_prefix(model: str, dtype: str) -> dict:
    llm = LLM(model, dtype=dtype)
    engine = llm.engine
    before = engine.stats().get("prefix_cache_hit_tokens", 0)
    total = 0
    for i, q in enumerate(QUESTIONS):
        c = conv(30.0, 300, q, system=SYSTEM)
        req = request(llm, f"q{i}", c, 8)
        total += len(req.token_ids)
        engine.add_request(req)
    done: set[str] = set()
    start = time.perf_counter()
    while len(done) < len(QUESTIONS):
        done |= {o.request_id for o in engine.step() if o.finished}
    hit = engine.stats()["prefix_cache_hit_tokens"] - before
    return {
        "prompt_tokens": total,
        "computed_tokens": total - hit,
        "computed_share": (total - hit) / total,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--workloads", default="concurrency,latency,shared_prefix")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--answer-tokens", type=int, default=24)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--chunk", type=int, default=None, help="EngineConfig.max_prefill_tokens")
    args = p.parse_args(argv)
    result = {}
    for name in args.workloads.split(","):
        if name == "concurrency":
            result[name] = concurrency(args.model, args.dtype, args.requests, args.answer_tokens)
        elif name == "latency":
            result[name] = latency(args.model, args.dtype, args.streams, args.clips, args.chunk)
        elif name == "shared_prefix":
            result[name] = shared_prefix(args.model, args.dtype)
        print(json.dumps({name: result[name]}), file=sys.stderr, flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
