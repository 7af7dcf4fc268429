"""A benchmark's own `qwen-audio serve` process: waiting until it answers."""

from __future__ import annotations

import time

import httpx


def wait_until_healthy(url: str, attempts: int = 600, pause: float = 0.2) -> bool:
    """True once `url`/health answers 200; False after `attempts` tries `pause` seconds apart."""
    for _ in range(attempts):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(pause)
    return False
