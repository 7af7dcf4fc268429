"""Prometheus metrics in the text exposition format, written by hand (no extra dependency).

Everything here is updated from the event loop only, so plain dicts need no locks.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

# Seconds; TTFT on a CPU ranges from tens of milliseconds to tens of seconds.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Labels = tuple[tuple[str, str], ...]

# engine.stats() key -> (metric name, type, help); keys an engine does not report are left out.
ENGINE_STATS = {
    "waiting": ("engine_waiting_requests", "gauge", "Requests queued in the engine."),
    "running": ("engine_running_requests", "gauge", "Requests in the engine's running batch."),
    "kv_used_bytes": ("kv_cache_used_bytes", "gauge", "KV cache memory in use."),
    "kv_budget_bytes": ("kv_cache_budget_bytes", "gauge", "KV cache memory budget."),
    "kv_blocks_used": ("kv_cache_blocks_used", "gauge", "KV blocks held by requests."),
    "kv_blocks_free": ("kv_cache_blocks_free", "gauge", "KV blocks free (cached ones included)."),
    "kv_blocks_cached": ("kv_cache_blocks_cached", "gauge", "KV blocks holding a cached prefix."),
    "preemptions": ("engine_preemptions_total", "counter", "Requests preempted for memory."),
    "prefix_cache_queried_tokens": (
        "prefix_cache_queried_tokens_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
    ),
    "prefix_cache_hit_tokens": (
        "prefix_cache_hit_tokens_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
    ),
    "prefix_cache_hit_rate": (
        "prefix_cache_hit_rate",
        "gauge",
        "Share of prompt tokens found in the prefix cache.",
    ),
}


def _labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    escaped = (
        (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in items
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: Labels) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts):
            total += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f"{name}_bucket{_labels(labels, (('le', le),))} {total}")
        out.append(f"{name}_sum{_labels(labels)} {self.sum:.6f}")
        out.append(f"{name}_count{_labels(labels)} {total}")
        return out


class Metrics:
    def __init__(self, model_name: str):
        self.model = model_name
        self.requests: dict[Labels, int] = defaultdict(int)  # endpoint, status
        self.errors: dict[Labels, int] = defaultdict(int)  # endpoint, code
        self.tokens: dict[Labels, int] = defaultdict(int)  # kind: prompt|audio|completion
        self.ttft: dict[Labels, Histogram] = defaultdict(Histogram)  # endpoint
        self.latency: dict[Labels, Histogram] = defaultdict(Histogram)  # endpoint
        self.in_flight = 0  # admitted requests (waiting or running)
        self.rejected_full = 0  # 429s from the bounded queue

    def request_done(self, endpoint: str, status: int) -> None:
        self.requests[(("endpoint", endpoint), ("status", str(status)))] += 1

    def error(self, endpoint: str, code: str) -> None:
        self.errors[(("endpoint", endpoint), ("code", code))] += 1

    def usage(self, prompt: int, audio: int, completion: int) -> None:
        self.tokens[(("kind", "prompt"),)] += prompt
        self.tokens[(("kind", "audio"),)] += audio
        self.tokens[(("kind", "completion"),)] += completion

    def first_token(self, endpoint: str, seconds: float) -> None:
        self.ttft[(("endpoint", endpoint),)].observe(seconds)

    def finished(self, endpoint: str, seconds: float) -> None:
        self.latency[(("endpoint", endpoint),)].observe(seconds)

    def render(self, engine_stats: dict) -> str:
        p = "qwen_audio"
        lines: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            lines.append(f"# HELP {p}_{name} {help_}")
            lines.append(f"# TYPE {p}_{name} {kind}")

        family("requests_total", "counter", "HTTP requests answered, by endpoint and status.")
        for labels, n in sorted(self.requests.items()):
            lines.append(f"{p}_requests_total{_labels(labels)} {n}")
        family("errors_total", "counter", "Error responses, by endpoint and error code.")
        for labels, n in sorted(self.errors.items()):
            lines.append(f"{p}_errors_total{_labels(labels)} {n}")
        family("tokens_total", "counter", "Tokens processed; prompt includes audio tokens.")
        for labels, n in sorted(self.tokens.items()):
            lines.append(f"{p}_tokens_total{_labels(labels)} {n}")
        family("time_to_first_token_seconds", "histogram", "Admission to the first token.")
        for labels, h in sorted(self.ttft.items()):
            lines += h.lines(f"{p}_time_to_first_token_seconds", labels)
        family("request_latency_seconds", "histogram", "Admission to the last token.")
        for labels, h in sorted(self.latency.items()):
            lines += h.lines(f"{p}_request_latency_seconds", labels)
        family("queue_rejections_total", "counter", "Requests refused with 429, queue full.")
        lines.append(f"{p}_queue_rejections_total {self.rejected_full}")
        family("requests_in_flight", "gauge", "Admitted requests not finished yet.")
        lines.append(f"{p}_requests_in_flight {self.in_flight}")
        for key, (name, kind, help_) in ENGINE_STATS.items():
            if key in engine_stats:
                family(name, kind, help_)
                lines.append(f"{p}_{name} {engine_stats[key]}")
        family("model_info", "gauge", "The served model.")
        lines.append(f"{p}_model_info{_labels((('model', self.model),))} 1")
        return "\n".join(lines) + "\n"
