"""The HTTP API against the official `openai` client on a live uvicorn, with a fake engine.

The fake (tests/fixtures/server_fake_engine.py) echoes what reached it ("heard N audio(s) of S s:
<text>"), so these tests check the protocol, validation, limits, security and cancellation of the
HTTP layer. The real engine end to end is in test_server_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from qwen_audio.audio import num_audio_tokens
from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server, wav_bytes

LIMITS = dict(
    max_upload_mb=2.0,
    max_audio_seconds=100.0,
    max_audios_per_request=4,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio_part(seconds: float = 1.0, rate: int = 16000) -> dict:
    return {
        "type": "input_audio",
        "input_audio": {"data": b64(wav_bytes(seconds, rate)), "format": "wav"},
    }


def user(*parts: dict, text: str | None = None) -> dict:
    content = list(parts) + ([{"type": "text", "text": text}] if text is not None else [])
    return {"role": "user", "content": content}


def good_chat() -> dict:
    return {"model": "m", "messages": [user(audio_part(0.5), text="still there?")]}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    (d / "clip.wav").write_bytes(wav_bytes(2.0))
    return d


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def server(engine, media_dir):
    settings = ServerSettings(allowed_local_media_paths=[media_dir], **LIMITS)
    with live_server(create_app(engine, settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code, error
    return error


# ---- happy paths with the official client -------------------------------------------------


def test_models_and_health(client, server, engine):
    models = client.models.list()
    assert [m.id for m in models.data] == [engine.model_name]
    assert client.models.retrieve(engine.model_name).id == engine.model_name
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["model"] == engine.model_name


def test_chat_with_input_audio_and_usage(client, engine):
    r = client.chat.completions.create(
        model="anything", messages=[user(audio_part(1.0), text="What is said?")]
    )
    assert r.object == "chat.completion"
    assert r.model == engine.model_name
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "heard 1 audio(s) of 1.0 s: What is said?"
    assert r.choices[0].finish_reason == "stop"
    audio_tokens = num_audio_tokens(16000)
    assert r.usage.prompt_tokens_details.audio_tokens == audio_tokens == 25
    assert r.usage.prompt_tokens >= audio_tokens
    assert r.usage.completion_tokens == 9
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the engine got decoded 16 kHz samples with their rate, in prompt.py's chat format
    part = engine.calls[-1]["messages"][0]["content"][0]
    samples, rate = part["audio"]
    assert part["type"] == "audio" and rate == 16000 and samples.shape == (16000,)


def test_chat_stream_matches_non_stream(client):
    messages = [user(audio_part(1.5), text="Say it in parts")]
    whole = client.chat.completions.create(model="m", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    plain = list(client.chat.completions.create(model="m", messages=messages, stream=True))
    assert all(c.usage is None for c in plain)


def test_sse_wire_format_ends_with_done(server):
    with httpx.stream(
        "POST", server + "/v1/chat/completions", json={**good_chat(), "stream": True}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_sampling_fields_reach_the_engine(client, engine):
    r = client.chat.completions.create(
        model="m",
        messages=[user(text="one two three four five")],
        temperature=0.3,
        top_p=0.9,
        seed=7,
        max_completion_tokens=3,
        extra_body={"top_k": 5, "repetition_penalty": 1.1, "min_tokens": 2},
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    p = engine.calls[-1]["params"]
    assert (p.temperature, p.top_p, p.seed, p.max_tokens) == (0.3, 0.9, 7, 3)
    assert (p.top_k, p.repetition_penalty, p.min_tokens) == (5, 1.1, 2)
    r = client.chat.completions.create(
        model="m", messages=[user(text="alpha beta STOP gamma")], stop=["STOP"], max_tokens=50
    )
    assert r.choices[0].message.content == "heard 0 audio(s) of 0.0 s: alpha beta "
    assert engine.calls[-1]["params"].stop == ("STOP",)


def test_audio_url_sources(client, media_dir):
    data_url = "data:audio/wav;base64," + b64(wav_bytes(1.0))
    local = (media_dir / "clip.wav").as_uri()
    r = client.chat.completions.create(
        model="m",
        messages=[
            user({"type": "audio_url", "audio_url": {"url": data_url}}, text="first"),
            {"role": "assistant", "content": "ok"},
            user({"type": "audio_url", "audio_url": {"url": local}}, text="second"),
        ],
    )
    assert r.choices[0].message.content == "heard 2 audio(s) of 3.0 s: second"


def test_completions_raw_prompt_with_audios_extension(client, engine):
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"
    audios = [{"data": b64(wav_bytes(2.0)), "format": "wav"}]
    r = client.completions.create(
        model="m", prompt=prompt, max_tokens=50, extra_body={"audios": audios}
    )
    assert r.object == "text_completion"
    assert r.choices[0].text == "heard 1 audio(s) of 2.0 s: Generate the caption in English:"
    assert r.usage.prompt_tokens_details.audio_tokens == num_audio_tokens(32000)
    assert engine.calls[-1]["prompt"] == prompt  # passed through as is, never re-rendered
    chunks = list(
        client.completions.create(
            model="m",
            prompt=prompt,
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"audios": audios},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    default = client.completions.create(model="m", prompt="a " * 40)
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens


SEGMENTS = [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]


def test_transcription_every_format(client):
    audio = ("long.wav", wav_bytes(65.0, rate=8000))  # three 30 s windows
    expected = " ".join(
        f"heard 1 audio(s) of {end - start:.1f} s: Transcribe the speech. The speech is in English."
        for start, end in SEGMENTS
    )
    kw = dict(model="whisper-1", file=audio, language="en", extra_body={"segmentation": "fixed"})
    j = client.audio.transcriptions.create(**kw)
    assert j.text == expected
    assert j.usage.type == "tokens" and j.usage.input_token_details.audio_tokens > 0
    text = client.audio.transcriptions.create(**kw, response_format="text")
    assert text.strip() == expected
    v = client.audio.transcriptions.create(**kw, response_format="verbose_json")
    assert v.text == expected and v.duration == 65.0 and v.language == "english"
    assert v.task == "transcribe" and v.usage.type == "duration" and v.usage.seconds == 65.0
    assert [(s.start, s.end) for s in v.segments] == SEGMENTS
    assert [s.id for s in v.segments] == [0, 1, 2] and v.segments[1].seek == 3000
    assert all(s.tokens for s in v.segments)
    srt = client.audio.transcriptions.create(**kw, response_format="srt")
    assert "2\n00:00:30,000 --> 00:01:00,000\nheard 1 audio(s) of 30.0 s" in srt
    assert srt.startswith("1\n00:00:00,000 --> 00:00:30,000\n")
    vtt = client.audio.transcriptions.create(**kw, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:30.000\n")
    assert "00:01:00.000 --> 00:01:05.000\nheard 1 audio(s) of 5.0 s" in vtt


def test_transcription_stream(client):
    kw = dict(model="whisper-1", file=("a.wav", wav_bytes(35.0, rate=8000)))
    whole = client.audio.transcriptions.create(**kw)
    events = list(client.audio.transcriptions.create(**kw, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) > 5 and events[-1].type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == events[-1].text == whole.text
    assert events[-1].usage.output_tokens == whole.usage.output_tokens


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks translations so
def test_translation(client, engine):
    t = client.audio.translations.create(
        model="whisper-1", file=("a.wav", wav_bytes(3.0)), response_format="verbose_json"
    )
    assert t.text == "heard 1 audio(s) of 3.0 s: Translate the speech into English."
    assert engine.calls[-1]["kind"] == "chat"
    plain = client.audio.translations.create(model="whisper-1", file=("a.wav", wav_bytes(3.0)))
    assert plain.text == t.text


def test_base_model_transcription_uses_the_raw_asr_prompt():
    engine = FakeEngine(model_name="fake-Qwen2-Audio-7B", tag="<|en|>")  # no checkpoint to read
    with live_server(create_app(engine, ServerSettings(asr_style="base"))) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        v = client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav_bytes(2.0)), response_format="verbose_json"
        )
        assert engine.calls[-1]["prompt"] == (
            "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech:"
        )
        assert v.text.startswith("heard 1 audio(s) of 2.0 s: Detect the language")  # no tag
        assert v.language == "english"  # from the tag the model wrote
        client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav_bytes(2.0)), language="fr"
        )
        assert engine.calls[-1]["prompt"].endswith("recognize the speech: <|fr|>")
        events = list(
            client.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", wav_bytes(2.0)), stream=True
            )
        )
        assert "".join(e.delta for e in events[:-1]) == events[-1].text
        assert "<|" not in events[-1].text


# ---- bad input: status, error shape, and the server keeps answering -----------------------


def chat_with(*parts, **extra) -> dict:
    return {"model": "m", "messages": [user(*parts, text="hi")], **extra}


def bad_cases() -> list:
    audio = lambda data: {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}  # noqa: E731
    url = lambda u: {"type": "audio_url", "audio_url": {"url": u}}  # noqa: E731
    chat = "/v1/chat/completions"
    return [
        ("malformed JSON", chat, {"content": b'{"messages": [', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ("body is not an object", chat, {"json": [1, 2]}, 400, None),
        ("no messages", chat, {"json": {"model": "m"}}, 400, None),
        ("empty messages", chat, {"json": {"model": "m", "messages": []}}, 400, None),
        ("messages not a list", chat, {"json": {"model": "m", "messages": "hi"}}, 400, None),
        ("temperature not a number", chat, {"json": chat_with(temperature="hot")}, 400, "invalid_value"),
        ("temperature out of range", chat, {"json": chat_with(temperature=7)}, 400, None),
        ("max_tokens zero", chat, {"json": chat_with(max_tokens=0)}, 400, None),
        ("max_tokens a string", chat, {"json": chat_with(max_tokens="many")}, 400, None),
        ("stream not a bool", chat, {"json": chat_with(stream="perhaps")}, 400, None),
        ("n=2", chat, {"json": chat_with(n=2)}, 400, None),
        ("too many stop strings", chat, {"json": chat_with(stop=[str(i) for i in range(17)])}, 400, None),
        ("min_tokens over max_tokens", chat, {"json": chat_with(min_tokens=9, max_tokens=3)}, 400, None),
        ("unknown role", chat, {"json": {"messages": [{"role": "tool", "content": "x"}]}}, 400, None),
        ("unknown content part", chat, {"json": chat_with({"type": "image_url", "image_url": {"url": "x"}})}, 400, "invalid_content_part"),
        ("content part without type", chat, {"json": chat_with({"text": "x"})}, 400, "invalid_content_part"),
        ("audio data not a string", chat, {"json": chat_with(audio(5))}, 400, None),
        ("bad base64", chat, {"json": chat_with(audio("@@not*base64@@"))}, 400, "invalid_base64"),
        ("corrupt audio", chat, {"json": chat_with(audio(b64(b"RIFF" + bytes(range(256)) * 8)))}, 400, "invalid_audio"),
        ("empty audio", chat, {"json": chat_with(audio(""))}, 400, "empty_audio"),
        ("audio without samples", chat, {"json": chat_with(audio(b64(wav_bytes(0.0))))}, 400, None),
        ("over-long audio", chat, {"json": chat_with(audio(b64(wav_bytes(101.0, rate=8000, subtype="PCM_U8"))))}, 400, "audio_too_long"),
        ("too many audios", chat, {"json": chat_with(*[audio(b64(wav_bytes(0.2)))] * 5)}, 400, "too_many_audios"),
        ("audio over the size limit", chat, {"json": chat_with(audio(b64(bytes(2_400_000))))}, 413, "audio_too_large"),
        ("body over the size limit", chat, {"json": chat_with(audio("A" * 4_000_000))}, 413, "request_too_large"),
        ("prompt over the context length", chat, {"json": chat_with(**{"messages": [user(text="word " * 3000)]})}, 400, "context_length_exceeded"),
        ("remote URL while disabled", chat, {"json": chat_with(url("http://example.com/a.wav"))}, 400, "audio_url_not_allowed"),
        ("local path outside the allowlist", chat, {"json": chat_with(url("file:///etc/passwd"))}, 400, "audio_url_not_allowed"),
        ("local path escaping with ..", chat, {"json": chat_with(url("file://MEDIA_DIR/../../etc/passwd"))}, 400, "audio_url_not_allowed"),
        ("missing local file", chat, {"json": chat_with(url("file://MEDIA_DIR/nope.wav"))}, 400, "audio_not_found"),
        ("unsupported URL scheme", chat, {"json": chat_with(url("ftp://example.com/a.wav"))}, 400, None),
        ("malformed data URL", chat, {"json": chat_with(url("data:audio/wav;base64"))}, 400, None),
        ("raw prompt: placeholder mismatch", "/v1/completions", {"json": {"prompt": "<|audio_bos|><|AUDIO|><|audio_eos|>x"}}, 400, "invalid_prompt"),
        ("raw prompt: two prompts", "/v1/completions", {"json": {"prompt": ["a", "b"]}}, 400, None),
        ("raw prompt: audio without data", "/v1/completions", {"json": {"prompt": "x", "audios": [{"format": "wav"}]}}, 400, None),
        ("raw prompt: echo", "/v1/completions", {"json": {"prompt": "x", "echo": True}}, 400, None),
        ("seed out of range", chat, {"json": chat_with(seed=2**70)}, 400, None),
        ("transcription without file", "/v1/audio/transcriptions", {"data": {"model": "w"}}, 400, None),
        ("transcription: file is a string", "/v1/audio/transcriptions", {"data": {"file": "x.wav"}}, 400, None),
        ("transcription: bad response_format", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav_bytes(1.0))}, "data": {"response_format": "xml"}}, 400, "invalid_value"),
        ("transcription: temperature not a number", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav_bytes(1.0))}, "data": {"temperature": "warm"}}, 400, None),
        ("transcription: stream with srt", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav_bytes(1.0))}, "data": {"stream": "true", "response_format": "srt"}}, 400, None),
        ("transcription: bad language", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", wav_bytes(1.0))}, "data": {"language": "english!"}}, 400, None),
        ("transcription: corrupt file", "/v1/audio/transcriptions", {"files": {"file": ("a.mp3", b"ID3" + bytes(5000))}}, 400, "invalid_audio"),
        ("transcription: empty file", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", b"")}}, 400, "empty_audio"),
        ("transcription: upload over the limit", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", bytes(2_200_000))}}, 413, "audio_too_large"),
        ("translation: over-long audio", "/v1/audio/translations", {"files": {"file": ("a.wav", wav_bytes(101.0, rate=8000, subtype="PCM_U8"))}}, 400, "audio_too_long"),
        ("unknown route", "/v1/nothing", {"json": {}}, 404, "not_found"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_input(server, media_dir, case):
    name, path, kwargs, status, code = case
    if "json" in kwargs:  # local-path cases name the allow-listed folder
        body = json.dumps(kwargs["json"]).replace("MEDIA_DIR", str(media_dir))
        kwargs = {**kwargs, "json": json.loads(body)}
    r = httpx.post(server + path, timeout=30, **kwargs)
    assert_error(r, status, code)
    # ...and the server is still fine
    assert httpx.get(server + "/health").status_code == 200
    assert httpx.post(server + "/v1/chat/completions", json=good_chat()).status_code == 200


def test_errors_surface_in_the_openai_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="m", messages=[user({"type": "input_audio", "input_audio": {"data": "%%"}})]
        )
    assert e.value.status_code == 400 and e.value.code == "invalid_base64"
    assert e.value.param == "messages[0].content[0]"


def test_chunked_body_over_the_limit_is_refused(server):
    def body():  # no Content-Length: the limit is enforced while the body arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 100_000
        yield b'"}]}'

    r = httpx.post(
        server + "/v1/chat/completions",
        content=body(),
        headers={"content-type": "application/json"},
    )
    assert_error(r, 413, "request_too_large")
    assert httpx.post(server + "/v1/chat/completions", json=good_chat()).status_code == 200


def test_wrong_method(server):
    assert_error(httpx.get(server + "/v1/chat/completions"), 405)


# ---- security -----------------------------------------------------------------------------


def test_api_key():
    with live_server(create_app(FakeEngine(), ServerSettings(api_key="s3cret"))) as url:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.post(url + "/v1/chat/completions", json=good_chat(), headers=headers)
            assert_error(r, 401, "invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.models.list().data
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # probes need no key
        assert httpx.get(url + "/").status_code == 200  # the page asks for the key itself


def test_cors_off_by_default_and_on_when_configured(server):
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    r = httpx.options(server + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(
        server + "/v1/chat/completions",
        json=good_chat(),
        headers={"Origin": "https://evil.example"},
    )
    assert "access-control-allow-origin" not in r.headers
    settings = ServerSettings(cors_origins=["https://app.example"])
    with live_server(create_app(FakeEngine(), settings)) as url:
        ok = httpx.options(
            url + "/v1/chat/completions", headers={**preflight, "Origin": "https://app.example"}
        )
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        bad = httpx.options(url + "/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in bad.headers


def test_default_bind_is_loopback():
    assert ServerSettings().host == "127.0.0.1"
    assert ServerSettings().cors_origins == [] and ServerSettings().allow_remote_audio is False


# ---- load: queue, timeout, disconnects -------------------------------------------------------


SLOW = {"model": "m", "messages": [user(text="[slow] talk")], "max_tokens": 200}


def test_full_queue_answers_429_with_retry_after():
    engine = FakeEngine(capacity=1)
    app = create_app(engine, ServerSettings(max_queue=1))
    with live_server(app) as url:

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                streams = []
                for _ in range(2):  # one runs, one waits: the queue (1) is full
                    req = c.build_request(
                        "POST", "/v1/chat/completions", json={**SLOW, "stream": True}
                    )
                    task = asyncio.create_task(c.send(req, stream=True))
                    streams.append(task)
                    await asyncio.sleep(0.3)
                assert engine.stats()["running"] == 1
                r = await c.post("/v1/chat/completions", json=good_chat())
                assert_error(r, 429, "queue_full")
                assert r.headers["retry-after"] == "1"
                for task in streams:
                    task.cancel()
                    try:
                        response = await task
                        await response.aclose()
                    except asyncio.CancelledError:
                        pass
            for _ in range(100):
                if app.state.handlers.admission.in_flight == 0:
                    break
                await asyncio.sleep(0.02)
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                assert (await c.post("/v1/chat/completions", json=good_chat())).status_code == 200

        asyncio.run(main())


def wait_until(condition, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_client_disconnect_cancels_streaming_generation():
    engine = FakeEngine()
    app = create_app(engine, ServerSettings())
    with live_server(app) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json={**SLOW, "stream": True}) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
            assert len(engine.running) == 1
        # the client hung up after a few chunks: the engine request ends long before its 4 s
        assert wait_until(lambda: not engine.running and engine.closed, timeout=2.0)
        assert wait_until(lambda: app.state.handlers.admission.in_flight == 0)
        assert len(engine.calls) == 1


def test_client_disconnect_cancels_non_streaming_generation():
    engine = FakeEngine()
    app = create_app(engine, ServerSettings())
    with live_server(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=SLOW, timeout=0.5)
        assert wait_until(lambda: not engine.running and engine.closed, timeout=2.0)
        assert wait_until(lambda: app.state.handlers.admission.in_flight == 0)
        r = httpx.post(url + "/v1/chat/completions", json=good_chat())
        assert r.status_code == 200


def test_request_timeout():
    engine = FakeEngine()
    with live_server(create_app(engine, ServerSettings(request_timeout_s=0.3))) as url:
        r = httpx.post(url + "/v1/chat/completions", json=SLOW, timeout=10)
        assert_error(r, 504, "timeout")
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIError, match="timed out"):
            for _ in client.chat.completions.create(stream=True, **SLOW):
                pass
        assert wait_until(lambda: not engine.running)
        assert httpx.post(url + "/v1/chat/completions", json=good_chat()).status_code == 200


def test_many_concurrent_clients(server):
    async def main():
        async with httpx.AsyncClient(base_url=server, timeout=30) as c:

            async def one(i):
                body = {"model": "m", "messages": [user(audio_part(0.2 + i % 3), text=f"q{i}")]}
                r = await c.post("/v1/chat/completions", json=body)
                return r.json()["choices"][0]["message"]["content"]

            return await asyncio.gather(*(one(i) for i in range(40)))

    answers = asyncio.run(main())
    assert answers == [f"heard 1 audio(s) of {0.2 + i % 3:.1f} s: q{i}" for i in range(40)]


# ---- metrics, page, command line --------------------------------------------------------------


def test_metrics(server, client):
    client.chat.completions.create(model="m", messages=[user(audio_part(1.0), text="x")])
    httpx.post(server + "/v1/chat/completions", content=b"{")
    text = httpx.get(server + "/metrics").text
    for needle in (
        'qwen_audio_requests_total{endpoint="chat",status="200"}',
        'qwen_audio_requests_total{endpoint="chat",status="400"}',
        'qwen_audio_errors_total{endpoint="chat",code="invalid_json"}',
        'qwen_audio_tokens_total{kind="audio"}',
        'qwen_audio_time_to_first_token_seconds_bucket{endpoint="chat",le="+Inf"}',
        'qwen_audio_request_latency_seconds_count{endpoint="chat"}',
        "qwen_audio_engine_waiting_requests 0",
        "qwen_audio_kv_cache_budget_bytes 1000000",
    ):
        assert needle in text
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line


def test_web_page_is_served_without_external_resources(server):
    r = httpx.get(server + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'src="/static/app.js"' in r.text
    for name in ("app.js", "style.css"):
        asset = httpx.get(server + f"/static/{name}")
        assert asset.status_code == 200
    static = Path(__file__).parents[1] / "qwen_audio" / "server" / "static"
    for f in static.iterdir():
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", f.read_text()), f
        assert "@import url(http" not in f.read_text()


def test_serve_command_line(monkeypatch):
    import argparse

    from qwen_audio.server.cli import add_serve_subcommand, settings_from_args

    monkeypatch.setenv("QWEN_AUDIO_API_KEY", "from-env")
    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "/m"])
    s = settings_from_args(args)
    assert (s.host, s.port, s.api_key, s.max_upload_mb) == ("127.0.0.1", 8000, "from-env", 25.0)
    assert args.dtype == "auto" and args.quantize is None and callable(args.func)
    args = parser.parse_args(
        ["serve", "--model", "/m", "--allow-remote-audio", "--remote-audio-domains", "a.org,b.org",
         "--cors-origins", "https://x.org", "--max-queue", "5", "--allowed-local-media-path", "/d",
         "--quantize", "int8", "--dtype", "bfloat16", "--request-timeout", "9"]
    )  # fmt: skip
    s = settings_from_args(args)
    assert s.allow_remote_audio and s.remote_audio_domains == ["a.org", "b.org"]
    assert s.cors_origins == ["https://x.org"] and s.max_queue == 5 and s.request_timeout_s == 9
    assert [str(p) for p in s.allowed_local_media_paths] == ["/d"]
