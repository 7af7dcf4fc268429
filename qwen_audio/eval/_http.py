"""POST JSON to an OpenAI-compatible server, retrying what is worth retrying."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


class RequestFailed(RuntimeError):
    """The server refused the request, or kept failing after every retry."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff_s: float = 1.0  # wait before the 2nd try; doubled for each later one
    max_backoff_s: float = 30.0


def post_json(
    client,
    url: str,
    payload: dict,
    *,
    headers: dict | None = None,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """POST `payload`; retry on connection errors, timeouts, 429 and 5xx with exponential backoff.

    Other 4xx answers are not retried (the request itself is wrong). Raises `RequestFailed`.
    """
    import httpx

    last = ""
    for attempt in range(retry.attempts):
        if attempt:
            delay = min(retry.max_backoff_s, retry.backoff_s * 2 ** (attempt - 1))
            sleep(delay * random.uniform(0.9, 1.1))  # jitter: parallel workers spread out
        try:
            response = client.post(url, json=payload, headers=headers)
        except httpx.HTTPError as e:  # connection refused, reset, timeout, ...
            last = f"{type(e).__name__}: {e}"
            continue
        if response.status_code == 429 or response.status_code >= 500:
            last = f"HTTP {response.status_code}: {response.text[:200]}"
            continue
        if response.status_code >= 400:
            raise RequestFailed(f"{url}: HTTP {response.status_code}: {response.text[:500]}")
        try:
            return response.json()
        except ValueError:
            last = f"not JSON: {response.text[:200]}"
    raise RequestFailed(f"{url}: failed after {retry.attempts} tries; last error: {last}")


def endpoint(base_url: str, path: str) -> str:
    """`http://host:8000` or `http://host:8000/v1` (or the full URL) -> the endpoint URL."""
    url = base_url.rstrip("/")
    if url.endswith(path):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + path
