"""The server with the real engine (`AsyncLLM`) on a tiny random-weight checkpoint.

The answers of random weights are meaningless text; what is checked is that a request goes all
the way through (decode, render, encode, generate, detokenise, OpenAI shapes), that a greedy
answer equals `LLM.chat` on the same conversation, and that a client that disconnects has its
generation cancelled and its memory freed.
"""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import psutil
import pytest
from openai import OpenAI

from qwen_audio import LLM, SamplingParams
from qwen_audio.async_llm import AsyncLLM
from qwen_audio.audio import load_audio, num_audio_tokens
from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import live_server, wav_bytes

WAV = wav_bytes(1.5, freq=330.0)


@pytest.fixture(scope="module")
def checkpoint(checkpoints):
    return checkpoints("mha")


@pytest.fixture(scope="module")
def engine(checkpoint):
    engine = AsyncLLM(checkpoint, dtype="float32")
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def app(engine):
    # Short transcription answers: random weights sometimes sample the <|AUDIO|> id itself,
    # which the engine cannot yet feed back (see the report of this test's author).
    return create_app(engine, ServerSettings(transcription_max_tokens=8))


@pytest.fixture(scope="module")
def server(app):
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def messages(text: str) -> list[dict]:
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode()}}
    return [{"role": "user", "content": [audio, {"type": "text", "text": text}]}]


def test_greedy_chat_equals_llm_chat(client, checkpoint, engine):
    r = client.chat.completions.create(
        model=engine.model_name, messages=messages("What is this?"), temperature=0, max_tokens=16
    )
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio": (load_audio(WAV), 16000)},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    expected = LLM(checkpoint, dtype="float32").chat(
        conversation, SamplingParams(temperature=0.0, max_tokens=16)
    )[0]
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == expected.finish_reason
    assert r.usage.completion_tokens == len(expected.token_ids)
    assert r.usage.prompt_tokens == expected.prompt_tokens
    assert r.usage.prompt_tokens_details.audio_tokens == num_audio_tokens(24000)

    chunks = client.chat.completions.create(
        model="m",
        messages=messages("What is this?"),
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_raw_prompt_and_transcription(client, engine):
    audio = {"data": base64.b64encode(WAV).decode(), "format": "wav"}
    r = client.completions.create(
        model="m",
        prompt="<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:",
        max_tokens=8,
        temperature=0,
        extra_body={"audios": [audio]},
    )
    assert r.usage.completion_tokens >= 1
    assert r.usage.prompt_tokens_details.audio_tokens == num_audio_tokens(24000)
    file = ("a.wav", wav_bytes(31.0, rate=8000))
    fixed = {"segmentation": "fixed"}
    v = client.audio.transcriptions.create(
        model="m", file=file, response_format="verbose_json", extra_body=fixed
    )
    assert v.duration == 31.0 and v.usage.seconds == 31.0
    assert {(s.start, s.end) for s in v.segments} <= {(0.0, 30.0), (30.0, 31.0)}
    j = client.audio.transcriptions.create(model="m", file=file, extra_body=fixed)
    assert j.text == v.text  # greedy by default
    assert j.usage.input_token_details.audio_tokens == num_audio_tokens(480000) + 25


def test_engine_errors_are_4xx(server):
    too_long = messages("word " * 5000)
    r = httpx.post(server + "/v1/chat/completions", json={"messages": too_long})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(
        server + "/v1/completions",
        json={"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|> x", "max_tokens": 2},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_prompt"
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_disconnect_cancels_generation_and_frees_memory(server, engine):
    idle = engine.stats()
    body = {
        "messages": messages("keep going"),
        "max_tokens": 1000,
        "min_tokens": 1000,  # no early end of sequence: only the disconnect can stop it
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(8):
            next(lines)
        assert engine.stats()["running"] == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and engine.stats()["running"]:
        time.sleep(0.02)
    stats = engine.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0
    # the request's reserved KV memory is released (the prefix cache may keep what it holds)
    assert stats["kv_used_bytes"] <= idle["kv_used_bytes"] + 2**20


def test_load_with_disconnects(server, app, engine, record_property):
    """32 concurrent clients send 200 requests with four different audios; every tenth client
    hangs up mid-stream. Every answer equals the one-at-a-time answer to the same input, and
    every slot is free afterwards."""
    clips = [
        wav_bytes(s, freq=f) for s, f in [(0.5, 200.0), (1.5, 330.0), (3.0, 440.0), (6.0, 550.0)]
    ]

    def body(i: int, **extra) -> dict:
        audio = {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(clips[i % 4]).decode()},
        }
        text = {"type": "text", "text": f"question {i % 4}"}
        content = [audio, text]
        return {
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": 6,
            **extra,
        }

    with httpx.Client(base_url=server, timeout=60) as c:
        expected = [c.post("/v1/chat/completions", json=body(i)).json() for i in range(4)]
    expected = [e["choices"][0]["message"]["content"] for e in expected]
    rss_before = psutil.Process().memory_info().rss

    async def main():
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=server, timeout=120) as c:

            async def one(i: int):
                async with limit:
                    if i % 10 == 9:  # read a little of a long stream, then hang up
                        long = body(i, stream=True, max_tokens=3000, min_tokens=3000)
                        async with c.stream("POST", "/v1/chat/completions", json=long) as r:
                            async for _ in r.aiter_lines():
                                break
                        return None
                    r = await c.post("/v1/chat/completions", json=body(i))
                    assert r.status_code == 200, r.text
                    return r.json()["choices"][0]["message"]["content"]

            return await asyncio.gather(*(one(i) for i in range(200)))

    t0 = time.monotonic()
    answers = asyncio.run(main())
    seconds = time.monotonic() - t0
    for i, a in enumerate(answers):
        if a is not None:
            assert a == expected[i % 4], i
    # 20 x 3000 tokens would keep the engine busy for a long while: the slots must be freed
    # because the disconnects cancelled those requests
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (engine.stats()["running"] or engine.stats()["waiting"]):
        time.sleep(0.05)
    assert engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0
    assert app.state.handlers.admission.in_flight == 0
    rss_after = psutil.Process().memory_info().rss
    report = (
        f"200 requests (20 disconnected) from 32 clients in {seconds:.1f} s; "
        f"RSS {rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after"
    )
    print(report)
    record_property("load", report)
