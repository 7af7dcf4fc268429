"""The benchmark workloads, run the same way through our engine and through transformers.

Each framework runs in its own process (so peak RSS is its own) and reports seconds per workload:
- ttft_5s / ttft_30s: time to the first token for a 5 s / 30 s clip plus a question, audio
  decoding and features included, on a clip the engine has not heard before;
- decode: tokens per second at batch 1 after the first token (64 tokens, eos ignored), from
  the arrival times of the streamed tokens;
- throughput: 16 requests with clips spread over 2-30 s and 64 new tokens each, submitted
  together (ours: continuous batching; transformers: `generate` on padded batches of 8);
- third_turn: time to the first token of the third turn of a voice chat with three 5 s clips;
- peak_rss: the process's peak resident memory over all of the above.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
DECODE_TOKENS = 64
THROUGHPUT_REQUESTS = 16
THROUGHPUT_TOKENS = 64
QUESTION = "What can you hear in this recording?"
ANSWERS = ["I hear a steady tone with some noise.", "This one sounds higher and shorter."]


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * (200 + 7 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


def question_turn(audio: np.ndarray, text: str | None = QUESTION) -> dict:
    content = [{"type": "audio", "audio": (audio, SAMPLE_RATE)}]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def throughput_lengths() -> list[float]:
    """16 clip lengths spread over 2-30 s, in a fixed shuffled order."""
    lengths = np.linspace(2.0, 30.0, THROUGHPUT_REQUESTS)
    order = np.random.default_rng(0).permutation(THROUGHPUT_REQUESTS)
    return [float(round(x, 2)) for x in lengths[order]]


def voice_chat(turns: int, seed: int = 500) -> list[dict]:
    """A voice chat (audio-only user turns) with `turns` user turns and fixed answers between."""
    conv: list[dict] = []
    for i in range(turns):
        conv.append(question_turn(clip(5.0, seed + i), text=None))
        if i < turns - 1:
            conv.append({"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]})
    return conv
