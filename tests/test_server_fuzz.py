"""Property-based fuzzing of the server's API (issue 16): generated requests, valid and hostile
field by field, and damaged audio in every container; the server answers each with a 2xx or an
OpenAI-shaped 4xx, never a 5xx, and is still healthy afterwards.

The requests follow the request models of `protocol.py` (the same ones `/openapi.json` is built
from): every field is drawn from the values it accepts and from values it must refuse (wrong
types, out-of-range numbers, lone surrogates, null bytes, huge integers, deep nesting), plus raw
bodies that are not JSON at all. The engine is the fake, which answers at once: the HTTP layer,
validation, limits and media handling are what is under test. Seeded (derandomized), so CI sees
the same ~3,700 requests every run (about 15 s).
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_audio.bench import hostile_audio as hostile
from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server, wav_bytes

FUZZ = settings(
    max_examples=800,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "a.wav").write_bytes(wav_bytes(0.3))
    engine = FakeEngine(max_model_len=512)
    settings_ = ServerSettings(
        allowed_local_media_paths=[root],
        max_upload_mb=1,
        max_audio_seconds=30,
        max_text_chars=4000,
        max_messages=20,
    )
    with live_server(create_app(engine, settings_)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client, engine, root


def check(r: httpx.Response) -> None:
    """2xx, or a 4xx with the OpenAI error shape; never a 5xx."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400 and r.request.url.path.startswith("/v1/"):
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert "Traceback" not in r.text


def send(client: httpx.Client, path: str, body) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    with client.stream("POST", path, content=data, headers=headers) as r:
        r.read()  # a stream too, to its end (an error inside it is an event, not a status)
    check(r)
    return r


# -- strategies ---------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\ud800", "a\udfffb", "\x00", "<|AUDIO|>", "<|im_end|>", "a" * 5000]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 2, 0.5, 1e308, 2**63, 2**64]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
WAV = base64.b64encode(wav_bytes(0.3)).decode()
audio_data = st.one_of(
    st.just(WAV),
    st.just("data:audio/wav;base64," + WAV),
    st.just(WAV[:101]),  # truncated
    st.just(base64.b64encode(hostile.mat4_at_1_hz(300)).decode()),
    st.just(base64.b64encode(hostile.wav_claiming_rate(0.2, 2_000_000_000)).decode()),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
    texts,
)
audio_urls = st.one_of(
    audio_data.map(lambda d: "data:audio/wav;base64," + d),
    st.sampled_from(
        [
            "file://{root}/a.wav",
            "file://{root}/a%00b",
            "file://{root}/../../etc/passwd",
            "file://{root}/" + "x" * 5000,
            "file://{root}/a\ud800",
            "file:///dev/zero",
            "http://127.0.0.1:1/a.wav",
            "ftp://example.com/a.wav",
            "data:,",
            "data:audio/wav;base64",
            "/etc/passwd",
        ]
    ),
    texts,
)


def maybe(strategy):
    """Mostly the valid strategy, one time in ten any JSON value in its place: with every field
    of a request drawn so, about half the requests are valid as a whole and reach the audio and
    the engine, the rest are refused field by field."""
    return st.integers(0, 9).flatmap(lambda i: strategy if i else json_values)


parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(texts)}),
    st.fixed_dictionaries(
        {
            "type": st.just("input_audio"),
            "input_audio": maybe(
                st.fixed_dictionaries({"data": maybe(audio_data), "format": maybe(texts)})
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("audio_url"),
            "audio_url": maybe(st.fixed_dictionaries({"url": maybe(audio_urls)})),
        }
    ),
    st.dictionaries(texts, json_values, max_size=3).map(lambda d: {"type": "text", **d}),
)
messages = st.fixed_dictionaries(
    {
        "role": maybe(st.sampled_from(["user", "assistant", "system", "developer"])),
        "content": maybe(st.one_of(texts, st.lists(maybe(parts), max_size=3), st.none())),
    },
    optional={"name": maybe(texts)},
)
sampling = {
    "model": maybe(texts),
    "temperature": maybe(st.floats(0, 2)),
    "top_p": maybe(st.floats(0, 1)),
    "top_k": maybe(st.integers(-2, 100)),
    "seed": numbers,
    "n": maybe(st.just(1)),
    "stream": maybe(st.booleans()),
    "stream_options": maybe(st.fixed_dictionaries({"include_usage": maybe(st.booleans())})),
    "stop": maybe(st.one_of(texts, st.lists(texts, max_size=6))),
    "repetition_penalty": maybe(st.floats(0, 10)),
    "min_tokens": maybe(st.integers(-1, 20)),
    "max_tokens": maybe(st.integers(-1, 24)),
}
chat_bodies = st.fixed_dictionaries(
    {"messages": maybe(st.lists(messages, min_size=1, max_size=4))},
    optional={**sampling, "max_completion_tokens": maybe(st.integers(-1, 24))},
)
completion_audios = st.fixed_dictionaries(
    {}, optional={"data": maybe(audio_data), "url": maybe(audio_urls), "format": maybe(texts)}
)
completion_bodies = st.fixed_dictionaries(
    {"prompt": maybe(st.one_of(texts, st.lists(texts, max_size=2)))},
    optional={
        **sampling,
        "audios": maybe(st.lists(completion_audios, max_size=3)),
        "echo": maybe(st.booleans()),
    },
)


def with_root(body, root) -> bytes:
    text = json.dumps(body)
    return text.replace("{root}", str(root)).encode()


# -- the properties -----------------------------------------------------------------------------


@FUZZ
@given(body=chat_bodies)
def test_chat_completions_never_answer_5xx(server, body):
    client, _, root = server
    send(client, "/v1/chat/completions", with_root(body, root))


@settings(FUZZ, max_examples=400)
@given(
    part=st.one_of(
        st.builds(lambda u: {"type": "audio_url", "audio_url": {"url": u}}, audio_urls),
        st.builds(
            lambda d, f: {"type": "input_audio", "input_audio": {"data": d, "format": f}},
            audio_data,
            st.sampled_from(["wav", "mp3", "flac", "", "x" * 300]),
        ),
    ),
    text=texts,
    stream=st.booleans(),
)
def test_audio_in_valid_requests_never_answers_5xx(server, part, text, stream):
    # every other field valid, so that each audio reaches the media checks and the decoder
    client, _, root = server
    content = [part, {"type": "text", "text": text}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "stream": stream}
    send(client, "/v1/chat/completions", with_root(body, root))


@FUZZ
@given(body=completion_bodies)
def test_completions_never_answer_5xx(server, body):
    client, _, root = server
    send(client, "/v1/completions", with_root(body, root))


@settings(FUZZ, max_examples=500)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(
            [b"", b"{", b"[]", b"null", b'{"messages": NaN}', b"\xff\xfe", b'{"a":' * 2000]
        ),
    ),
)
def test_raw_bodies_never_answer_5xx(server, path, body):
    client, _, _ = server
    send(client, path, body)


@settings(FUZZ, max_examples=300)
@given(
    path=st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/translations"]),
    file=st.one_of(st.just(wav_bytes(0.3)), st.binary(max_size=300)),
    fields=st.dictionaries(
        st.sampled_from(
            ["model", "language", "prompt", "response_format", "temperature", "stream"]
        ),
        texts,
        max_size=4,
    ),
    files=st.integers(0, 2),
)
def test_transcriptions_never_answer_5xx(server, path, file, fields, files):
    client, _, _ = server
    upload = [("file", ("a.wav", file, "audio/wav"))] * files
    data = {k: v.encode("utf-8", "surrogatepass") for k, v in fields.items()}
    with client.stream("POST", path, files=upload, data=data) as r:
        r.read()
    check(r)


@settings(FUZZ, max_examples=300)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(["/", "/health", "/metrics", "/openapi.json", "/v1/models", "/static/"]),
        st.text(max_size=30).map(lambda t: "/v1/models/" + t),
        st.text(max_size=30).map(lambda t: "/static/" + t),
        st.sampled_from(["/static/%00", "/static/..%2f..%2fapp.py", "/v1/models/%ff", "//v1"]),
    ),
)
def test_any_path_and_method_never_answer_5xx(server, method, path):
    client, _, _ = server
    try:
        r = client.request(method, path)
    except (httpx.InvalidURL, UnicodeError):
        return  # not a request a client can send
    assert r.status_code < 500, (method, path, r.status_code, r.text[:300])


# -- damaged audio in every container -------------------------------------------------------------


@pytest.mark.timeout(180)  # a hang fails
def test_damaged_audio_in_every_container_gets_2xx_or_4xx(server):
    client, engine, _ = server
    statuses = {}
    for i, (name, data) in enumerate(hostile.clean_corpus().items()):
        for damage, broken in {"clean": data, **hostile.mutations(data, seed=i)}.items():
            part = {
                "type": "input_audio",
                "input_audio": {"data": base64.b64encode(broken).decode()},
            }
            body = {"messages": [{"role": "user", "content": [part]}], "max_tokens": 2}
            r = send(client, "/v1/chat/completions", body)
            statuses[(name, damage)] = r.status_code
    assert all(statuses[(name, "clean")] == 200 for name, _ in statuses), statuses
    codes = set(statuses.values())
    assert codes <= {200, 400, 413}, codes


def test_the_server_is_healthy_after_the_fuzzing(server):
    client, engine, _ = server
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert not engine.running and not engine.waiting  # no request left behind
    counts = {}  # the server's own count of what it answered, by status
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("qwen_audio_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + int(line.rsplit(" ", 1)[1])
    assert sum(counts.values()) >= 2000, counts
    assert not any(status.startswith("5") for status in counts), counts
