"""Text bounds of the server (issue 16): refused before tokenizing, 400s that name the field."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server, wav_bytes


@pytest.fixture(scope="module")
def url():
    engine = FakeEngine(max_model_len=2048)  # 16 x 2048 = 32,768 characters by default
    with live_server(create_app(engine, ServerSettings(max_messages=50))) as u:
        yield u


def post(url: str, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes lone surrogates as \\ud800 (ASCII), as a hostile client would send them
    data = json.dumps(body)
    headers = {"content-type": "application/json"}
    return httpx.post(url + path, content=data, headers=headers, timeout=30)


def test_megabytes_of_text_are_refused_at_once(url):
    start = time.perf_counter()
    r = post(url, "/v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": "word " * 800_000}],
        "max_tokens": 4,
    })  # fmt: skip
    assert time.perf_counter() - start < 5  # no tokenizing: only the JSON parse
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "text_too_long" and err["param"] == "messages[0].content"
    assert "32,768 characters" in err["message"] and "--max-text-chars" in err["message"]


def test_the_limit_counts_every_part_and_names_the_one_that_crossed_it(url):
    parts = [{"type": "text", "text": "a" * 20_000}, {"type": "text", "text": "b" * 20_000}]
    r = post(
        url,
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": parts}]},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages[0].content[1].text"
    short = [{"type": "text", "text": "a" * 1000}]  # within the limit, and the fake's context
    ok = post(
        url,
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": short}]},
    )
    assert ok.status_code == 200, ok.text


def test_too_many_messages(url):
    messages = [{"role": "user", "content": "hi"}] * 51
    r = post(url, "/v1/chat/completions", {"model": "m", "messages": messages})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_messages"
    # 100,000 turns (issue 16: a 4.5 s stall): parsing stops at protocol.MAX_MESSAGES
    r = post(url, "/v1/chat/completions", {"model": "m", "messages": messages * 2000})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "too_many_messages" and "at most 50 " in err["message"]


def test_list_fields_are_bounded_while_parsing(url):
    from qwen_audio.server.protocol import MAX_AUDIO_ITEMS, MAX_PARTS

    parts = [{"type": "text", "text": "a"}] * (MAX_PARTS + 1)
    r = post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"
    audios = [{"data": "AAAA"}] * (MAX_AUDIO_ITEMS + 1)
    r = post(url, "/v1/completions", {"prompt": "x", "audios": audios})
    assert r.status_code == 400 and r.json()["error"]["param"] == "audios"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a\ud800b"}]},
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
            "messages[0].content[0].text",
        ),
        ("/v1/completions", {"prompt": "x\udfff"}, "prompt"),
    ],
)
def test_lone_surrogates_are_a_400_not_a_500(url, path, body, param):
    r = post(url, path, {"model": "m", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and "surrogate" in r.json()["error"]["message"]


def test_completion_prompt_length(url):
    r = post(url, "/v1/completions", {"model": "m", "prompt": "z" * 40_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_dns_rebinding_host_is_refused_on_a_loopback_server(url):
    r = httpx.get(url + "/v1/models", headers={"Host": "evil.example"})
    assert r.status_code == 421 and r.json()["error"]["code"] == "host_not_allowed"
    for host in ("127.0.0.1:8000", "localhost", "[::1]:9"):
        assert httpx.get(url + "/health", headers={"Host": host}).status_code == 200


def test_allowed_hosts_and_wildcard_binds():
    from qwen_audio.server.app import allowed_host_names, host_name

    assert allowed_host_names(ServerSettings(host="0.0.0.0")) is None
    assert allowed_host_names(ServerSettings(host="0.0.0.0", allowed_hosts=["a.lan"])) == {"a.lan"}
    names = allowed_host_names(ServerSettings(host="127.0.0.1", allowed_hosts=["box"]))
    assert {"box", "localhost", "127.0.0.1", "[::1]"} <= names
    assert host_name("Example.COM:8000") == "example.com" and host_name("[::1]:80") == "[::1]"


def test_key_is_checked_before_the_body_is_read():
    with live_server(create_app(FakeEngine(), ServerSettings(api_key="k"))) as u:
        r = httpx.post(
            u + "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 401  # not 400: the body was never parsed
        assert httpx.get(u + "/openapi.json").status_code == 401
        assert (
            httpx.get(u + "/openapi.json", headers={"Authorization": "Bearer k"}).status_code == 200
        )


def test_every_page_carries_the_security_headers(url):
    for path in ("/", "/static/index.html"):
        r = httpx.get(url + path)
        assert r.status_code == 200
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(url + "/health").headers["x-content-type-options"] == "nosniff"


def test_two_files_in_one_upload_are_refused(url):
    files = [
        ("file", ("a.wav", wav_bytes(0.5), "audio/wav")),
        ("file", ("b.wav", wav_bytes(0.5), "audio/wav")),
    ]
    r = httpx.post(url + "/v1/audio/transcriptions", files=files, data={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


# -- audio cost, bounded before decoding (finding 2) -------------------------------------------


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def chat_audio(data: bytes) -> dict:
    audio = {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}}
    return {"model": "m", "messages": [{"role": "user", "content": [audio]}]}


def test_a_1_hz_mat4_upload_is_refused_from_its_header(url):
    from qwen_audio.bench.hostile_audio import mat4_at_1_hz

    r = post(url, "/v1/chat/completions", chat_audio(mat4_at_1_hz()))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "unsupported_sample_rate" and err["param"] == "messages[0].content[0]"
    assert "1 Hz" in err["message"] and "--min-sample-rate" in err["message"]


def test_many_channels_at_a_high_rate_are_refused_by_their_samples(url):
    from qwen_audio.bench.hostile_audio import silent_flac

    # 8 x 96 kHz x 160 s = 123 M samples, over the default 115.2 M (1200 s of 48 kHz stereo),
    # although 160 s is far within --max-audio-seconds; the transcription endpoint, which has no
    # context bound, so the samples limit is the one that speaks
    data = silent_flac(160, channels=8, rate=96_000)
    files = {"file": ("a.flac", data, "audio/flac")}
    r = httpx.post(url + "/v1/audio/transcriptions", files=files, data={"model": "m"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "too_many_samples" and "--max-audio-samples" in err["message"]
    assert "122,880,000" in err["message"]


def test_chat_audio_is_bounded_by_the_context(url):
    from qwen_audio.bench.hostile_audio import silent_flac

    # the fake's context of 2048 tokens holds 81.92 s of audio at 25 tokens a second
    r = post(url, "/v1/chat/completions", chat_audio(silent_flac(90, channels=1, rate=16_000)))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "audio_too_long" and "context of 2,048 tokens" in err["message"]
    two = chat_audio(silent_flac(50, channels=1, rate=16_000))
    two["messages"][0]["content"] *= 2  # 50 s fits, 50 + 50 s do not
    r = post(url, "/v1/chat/completions", two)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[1]"


def test_an_over_long_stream_is_stopped_while_decoding():
    from qwen_audio.bench.hostile_audio import opus_webm

    settings = ServerSettings(max_audio_seconds=10)
    with live_server(create_app(FakeEngine(), settings)) as u:
        r = post(u, "/v1/chat/completions", chat_audio(opus_webm(20)))  # no duration in it
    assert r.status_code == 400 and r.json()["error"]["code"] == "audio_too_long"
    assert "over 10 s" in r.json()["error"]["message"]


def test_decoding_goes_through_the_engines_bounded_pool():
    engine = FakeEngine(prepare_workers=1)
    with live_server(create_app(engine, ServerSettings())) as u:
        assert post(u, "/v1/chat/completions", chat_audio(wav_bytes(0.5))).status_code == 200
    assert engine.max_preparing == 1


# -- file:// names and CORS --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a%00b", "a.wav%00", "a\ud800b"])
def test_null_bytes_and_lone_surrogates_in_file_urls_are_a_400(tmp_path, name):
    (tmp_path / "a.wav").write_bytes(wav_bytes(0.5))
    settings = ServerSettings(allowed_local_media_paths=[tmp_path])
    with live_server(create_app(FakeEngine(), settings)) as u:
        part = {"type": "audio_url", "audio_url": {"url": f"file://{tmp_path}/{name}"}}
        body = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
        r = post(u, "/v1/chat/completions", body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "messages[0].content[0]"
        part["audio_url"]["url"] = f"file://{tmp_path}/a.wav"
        assert post(u, "/v1/chat/completions", body).status_code == 200


def test_cors_preflights_pass_the_key_check_and_a_401_carries_cors_headers():
    origin = "http://app.example"
    settings = ServerSettings(api_key="k", cors_origins=[origin])
    with live_server(create_app(FakeEngine(), settings)) as u:
        preflight = httpx.options(
            u + "/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        r = httpx.post(u + "/v1/chat/completions", content=b"{}", headers={"Origin": origin})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin


# -- slow clients (finding 7) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_url():
    settings = ServerSettings(read_timeout_s=0.5, min_body_rate=64 * 1024)
    with live_server(create_app(FakeEngine(), settings)) as u:
        yield u


def raw_request(url: str, head: bytes, body_pieces=(), pause: float = 0.0) -> bytes:
    """Sends `head` and the body pieces `pause` apart; returns all the server sent until it
    closed the connection (the socket's own timeout, 20 s, fails a server that never does)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head)
        for piece in body_pieces:
            time.sleep(pause)
            try:
                sock.sendall(piece)
            except OSError:  # closed on us: what the test wants to see
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def post_head(length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length
    )


def test_a_content_length_larger_than_the_body_gets_a_408_and_a_closed_connection(strict_url):
    answer = raw_request(strict_url, post_head(1000) + b'{"model": "m"')
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"--read-timeout" in answer and b"connection: close" in answer.lower()


def test_a_trickled_body_is_cut_off_by_the_minimum_rate(strict_url):
    # each piece arrives within the read timeout, but 1 byte per 0.2 s is far below 64 KB/s
    pieces = [b" "] * 40
    answer = raw_request(strict_url, post_head(len(pieces)), pieces, pause=0.2)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"--min-body-rate" in answer


def test_trickled_or_unfinished_headers_are_cut_off(strict_url):
    assert raw_request(strict_url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n") == b""
    trickle = [b"X-Slow: " + b"a" * 10, b"a" * 10, b"a" * 10, b"a" * 10, b"\r\n\r\n"]
    answer = raw_request(strict_url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", trickle, 0.2)
    assert answer == b""  # closed before the head was complete (0.8 s > 0.5 s)
    assert httpx.get(strict_url + "/health").status_code == 200  # still serving


def test_a_body_that_is_not_read_cannot_hold_the_connection(strict_url):
    # a 404 answered without reading the body; the rest of the body then trickles in
    head = b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
    answer = raw_request(strict_url, head, [b"x"] * 20, pause=0.1)
    assert answer.startswith(b"HTTP/1.1 404")  # and then the connection was closed


def test_the_queue_limit_counts_the_engine_requests_of_one_transcription():
    """A transcription is one HTTP request but one engine request per segment: while its
    segments wait in the engine, new requests are refused as the queue limit says."""
    from qwen_audio.server.engine_calls import Admission
    from qwen_audio.server.metrics import Metrics
    from qwen_audio.server.protocol import APIError
    from qwen_audio.server.settings import ServerSettings

    class Engine:  # one transcription in flight: 2 segments running, 5 waiting
        def stats(self) -> dict:
            return {"running": 2, "waiting": 5}

    admission = Admission(Engine(), ServerSettings(max_queue=4), Metrics("m"))
    admission.in_flight = 1
    with pytest.raises(APIError) as err:
        admission.admit()
    assert err.value.status == 429
    Admission(Engine(), ServerSettings(max_queue=8), Metrics("m")).admit()  # 5 < 8: admitted
