"""Issue 16's targets, measured: each hostile request against `qwen-audio serve` with the demo
model gets its 4xx within 1 s, the server's memory rises by at most 100 MB beyond the request's
own bytes, and a concurrent stream's inter-token gaps stay under 2x its median meanwhile.

    python benchmarks/server_hostile.py [--port 8766] [--model DIR]

Starts the server (demo model, an API key, a media folder, --read-timeout 5), streams one long
answer in the background, and sends each repro in turn. Per repro: status, seconds to the
answer, the rise of the server's peak RSS (VmHWM) and current RSS, and the largest token gap
of the background stream during the request against the stream's median gap before any repro.
Prints a table and writes JSON to --out. Timing is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from qwen_audio.bench import hostile_audio as hostile
from qwen_audio.bench.hostile_audio import tone_wav
from qwen_audio.bench.server_process import wait_until_healthy

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
AUTH_LINE = f"Authorization: Bearer {KEY}\r\n".encode()
DEMO = Path(hostile.__file__).resolve().parents[1] / "assets" / "demo-model"


def memory_kb(pid: int) -> tuple[int, int]:
    """(peak RSS, current RSS) of the process, in KB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


class Stream(threading.Thread):
    """A client streaming a long answer; records when each token arrived."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.times: list[float] = []
        self.stop = False

    def run(self) -> None:
        body = {
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400,
            "temperature": 0.8,
            "stream": True,
        }
        with httpx.Client(timeout=120, headers=AUTH) as client:
            while not self.stop:
                with client.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and '"content":"' in line:
                            self.times.append(time.perf_counter())
                        if self.stop:
                            break

    def gaps(self, start: float, end: float) -> list[float]:
        times = [t for t in self.times if start <= t <= end + 1.0]
        return [b - a for a, b in zip(times, times[1:])]


def trickle(url: str, head: bytes, pieces: list[bytes], pause: float) -> tuple[str, float]:
    """A slow client: the first line the server answered, or 'closed'; seconds until then."""
    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(head)
        for piece in pieces:
            time.sleep(pause)
            try:
                sock.sendall(piece)
            except OSError:
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    first = answer.split(b"\r\n", 1)[0].decode() or "closed"
    return first, time.perf_counter() - start


def chat(content) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4}


def audio_part(data: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument("--out", default="build/server_hostile.json")
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    media = Path(tempfile.mkdtemp(prefix="hostile-media-"))
    (media / "a.wav").write_bytes(tone_wav(0.5))
    cmd = [sys.executable, "-m", "qwen_audio.cli", "serve", "--model", args.model]
    cmd += ["--port", str(args.port), "--api-key", KEY, "--read-timeout", "5"]
    cmd += ["--allowed-local-media-path", str(media), "--log-level", "warning"]
    server = subprocess.Popen(cmd)
    try:
        if not wait_until_healthy(url):
            raise SystemExit("the server did not start")
        return measure(url, server.pid, media, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(url: str, pid: int, media: Path, out: str) -> int:
    flac_8ch = hostile.silent_flac(1199, channels=8, rate=96_000)
    repros = {
        "4 MB text part": ("/v1/chat/completions", chat("word " * 800_000)),
        "10 MB text": ("/v1/chat/completions", chat("w" * 10_000_000)),
        "100,000 short turns": (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}] * 100_000},
        ),
        "lone surrogate": ("/v1/completions", {"prompt": "x\ud800"}),
        "file:// null byte": (
            "/v1/chat/completions",
            chat([{"type": "audio_url", "audio_url": {"url": f"file://{media}/a%00b"}}]),
        ),
        "MAT4 at 1 Hz (60 KB)": (
            "/v1/chat/completions",
            chat([audio_part(hostile.mat4_at_1_hz())]),
        ),
        f"FLAC 8 ch x 96 kHz x 1199 s ({len(flac_8ch) / 1e6:.1f} MB), chat": (
            "/v1/chat/completions",
            chat([audio_part(flac_8ch)]),
        ),
        "same FLAC, transcription": ("transcription", flac_8ch),
        "WAV claiming a 2 GHz rate": (
            "/v1/chat/completions",
            chat([audio_part(hostile.wav_claiming_rate(1.0, 2_000_000_000))]),
        ),
        "unauthenticated 30 MB body": ("noauth", b"{" + b" " * 30_000_000),
        "max-size text (32,768 chars, accepted)": (
            "/v1/chat/completions",
            chat("word " * 6553),
        ),
        "80 s WAV + 30,000 characters (prepared, then over the context)": (
            "/v1/chat/completions",
            chat([audio_part(tone_wav(80.0)), {"type": "text", "text": "word " * 6000}]),
        ),
        "80 s WAV (accepted; the engine prefills 2,000 tokens)": (
            "/v1/chat/completions",
            chat([audio_part(tone_wav(80.0))]),
        ),
    }
    stream = Stream(url)
    stream.start()
    time.sleep(8)  # the stream's baseline
    baseline = stream.gaps(0, time.perf_counter())
    median = statistics.median(baseline)
    rows = []
    with httpx.Client(timeout=120) as client:
        for name, (path, body) in repros.items():
            peak0, rss0 = memory_kb(pid)
            start = time.perf_counter()
            if path == "transcription":
                files = {"file": ("a.flac", body, "audio/flac")}
                r = client.post(url + "/v1/audio/transcriptions", files=files, headers=AUTH)
                size = len(body)
            elif path == "noauth":
                r = client.post(url + "/v1/chat/completions", content=body)
                size = len(body)
            else:
                data = json.dumps(body).encode()
                size = len(data)
                r = client.post(
                    url + path,
                    content=data,
                    headers={**AUTH, "content-type": "application/json"},
                )
            seconds = time.perf_counter() - start
            time.sleep(1.0)  # the stream's tokens right after the request count too
            peak1, rss1 = memory_kb(pid)
            gaps = stream.gaps(start, start + seconds)
            rows.append(
                {
                    "repro": name,
                    "status": r.status_code,
                    "code": (r.json().get("error") or {}).get("code")
                    if r.headers.get("content-type", "").startswith("application/json")
                    else None,
                    "seconds": round(seconds, 3),
                    "request_mb": round(size / 1e6, 2),
                    "peak_rss_rise_mb": round((peak1 - peak0) / 1024, 1),
                    "rss_rise_mb": round((rss1 - rss0) / 1024, 1),
                    "max_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
                    "max_gap_x_median": round(max(gaps) / median, 2) if gaps else None,
                }
            )
            print(rows[-1], flush=True)
    for name, head, pieces, pause in (
        ("Content-Length 1000, 13 bytes sent", b"POST /v1/chat/completions HTTP/1.1\r\n"
         b"Host: 127.0.0.1\r\n" + AUTH_LINE + b"Content-Length: 1000\r\n\r\n{\"model\": \"m\"", [], 0.0),
        ("body trickled 1 byte / 0.5 s", b"POST /v1/chat/completions HTTP/1.1\r\n"
         b"Host: 127.0.0.1\r\n" + AUTH_LINE + b"Content-Length: 200\r\n\r\n", [b" "] * 200, 0.5),
        ("headers trickled 1 line / 0.5 s", b"GET /health HTTP/1.1\r\n",
         [b"X-A: b\r\n"] * 200, 0.5),
        ("half a head, then silence", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", [], 0.0),
    ):  # fmt: skip
        first, seconds = trickle(url, head, pieces, pause)
        rows.append({"repro": name, "status": first, "seconds": round(seconds, 2)})
        print(rows[-1], flush=True)
    stream.stop = True
    start = time.perf_counter()
    health = httpx.get(url + "/health", timeout=5)
    ordered = sorted(baseline)
    result = {
        "cpu": os.cpu_count(),
        "stream_median_gap_ms": round(median * 1000, 1),
        "stream_baseline_p99_gap_ms": round(ordered[int(0.99 * len(ordered))] * 1000, 1),
        "stream_baseline_max_gap_ms": round(ordered[-1] * 1000, 1),
        "stream_baseline_tokens": len(baseline) + 1,
        "health_after_ms": round((time.perf_counter() - start) * 1000, 1),
        "health_status": health.status_code,
        "rows": rows,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
