"""Issue 18's realtime target, measured: speech streamed at real time to /v1/realtime through the
official `openai` client; for every utterance, the seconds from the end of its speech to the
arrival of its `conversation.item.input_audio_transcription.completed` event; N sessions at once.

    python benchmarks/realtime_latency.py [--sessions 1 8] [--silence-ms 500] [--model DIR]

Starts `qwen-audio serve` (the demo model by default), and per session count runs that many
sessions together, each streaming the same talk (6 espeak-ng sentences, 1 s pauses) in 100 ms
appends paced by the wall clock, as a microphone would. The end of an utterance is the moment
its last loud sample is due in real time (start + its position), so the figure includes the
server's turn detection (`--silence-ms` of silence before it decides the speaker stopped), the
100 ms append granularity, and the transcription. Prints a table, writes JSON to --out, and the
machine's load average before and after (other processes share the CPU on a shared VM).
Timing is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from openai import AsyncOpenAI

from qwen_audio.bench.live_speech import MORE_SENTENCES, RATE, SENTENCES, conversation
from qwen_audio.bench.server_process import wait_until_healthy

DEMO = Path(__file__).resolve().parents[1] / "qwen_audio" / "assets" / "demo-model"
PIECE = RATE // 10  # 100 ms


async def session(url: str, pcm: np.ndarray, truth: list, silence_ms: int) -> dict:
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    arrivals: dict[str, float] = {}
    committed: list[str] = []
    transcripts: dict[str, str] = {}
    errors: list[str] = []
    turn = {"type": "server_vad", "silence_duration_ms": silence_ms, "prefix_padding_ms": 300}
    config = {"type": "transcription", "audio": {"input": {"turn_detection": turn,
              "transcription": {"language": "en"}}}}  # fmt: skip
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session=config)
        t0 = time.monotonic()

        async def stream() -> None:
            for i in range(0, len(pcm), PIECE):
                await asyncio.sleep(max(0.0, t0 + i / RATE - time.monotonic()))
                chunk = base64.b64encode(pcm[i : i + PIECE].tobytes()).decode()
                await conn.input_audio_buffer.append(audio=chunk)

        sender = asyncio.create_task(stream())
        async for event in conn:
            if event.type == "input_audio_buffer.committed":
                committed.append(event.item_id)
            elif event.type.endswith("transcription.completed"):
                arrivals[event.item_id] = time.monotonic() - t0
                transcripts[event.item_id] = event.transcript
            elif event.type == "error" or event.type.endswith("transcription.failed"):
                errors.append(str(event))
            if len(arrivals) == len(truth) or len(committed) > len(truth):
                break
        await sender
    done = [arrivals.get(item) for item in committed]
    latencies = [t - end for t, (_, end) in zip(done, truth) if t is not None]
    return {
        "latencies": latencies,
        "utterances": len(committed),
        "transcripts": [transcripts.get(i, "") for i in committed],
        "errors": errors,
    }


async def run(url: str, sessions: int, pcm, truth, silence_ms: int) -> tuple[list, float]:
    """The sessions' results, and the longest the event loop was away: a run during which this
    process (or the server, on a shared VM) was paused measures the pause, not the server."""
    longest, done = 0.0, False

    async def watch() -> None:
        nonlocal longest
        while not done:
            t = time.monotonic()
            await asyncio.sleep(0.02)
            longest = max(longest, time.monotonic() - t - 0.02)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(
            *(session(url, pcm, truth, silence_ms) for _ in range(sessions)),
            return_exceptions=True,
        )
    finally:
        done = True
        await watcher
    return results, longest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8767)
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--silence-ms", type=int, nargs="+", default=[500])
    ap.add_argument("--out", default="build/realtime_latency.json")
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    pcm, truth = conversation(SENTENCES + MORE_SENTENCES)
    cmd = [sys.executable, "-m", "qwen_audio.cli", "serve", "--model", args.model]
    cmd += ["--port", str(args.port), "--log-level", "warning"]
    server = subprocess.Popen(cmd)
    results = []
    try:
        if not wait_until_healthy(url):
            raise SystemExit("the server did not start")
        asyncio.run(run(url, 1, *conversation(SENTENCES[:1]), 500))  # warm-up
        for silence in args.silence_ms:
            for n in args.sessions:
                for _ in range(5):
                    load = os.getloadavg()
                    out, stall = asyncio.run(run(url, n, pcm, truth, silence))
                    if stall < 1.0:
                        break
                    print(f"  (paused for {stall:.1f} s by another job: measured again)")
                broken = [repr(s) for s in out if isinstance(s, BaseException)]
                out = [s for s in out if not isinstance(s, BaseException)]
                lat = [x for s in out for x in s["latencies"]]
                row = {
                    "sessions": n,
                    "silence_ms": silence,
                    "utterances": sum(s["utterances"] for s in out),
                    "expected": n * len(truth),
                    "errors": sum(len(s["errors"]) for s in out) + len(broken),
                    "longest_pause_s": round(stall, 3),
                    "median_s": round(statistics.median(lat), 3) if lat else None,
                    "p90_s": round(float(np.percentile(lat, 90)), 3) if lat else None,
                    "max_s": round(max(lat), 3) if lat else None,
                    "load_before": [round(x, 2) for x in load],
                    "load_after": [round(x, 2) for x in os.getloadavg()],
                    "transcripts": out[0]["transcripts"] if out else [],
                    "error_samples": ([e for s in out for e in s["errors"]] + broken)[:3],
                }
                results.append(row)
                print(
                    f"{n} session(s), silence {silence} ms: {row['utterances']}/{row['expected']}"
                    f" utterances, {row['errors']} errors, end of speech -> completed: median "
                    f"{row['median_s']} s, p90 {row['p90_s']} s, max {row['max_s']} s "
                    f"(load {row['load_before'][0]} -> {row['load_after'][0]})",
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(timeout=30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "runs": results}, indent=2))
    print("first session's transcripts:", *results[0]["transcripts"], sep="\n  ")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
