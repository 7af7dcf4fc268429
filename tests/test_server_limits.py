"""Text bounds of the server (issue 16): refused before tokenizing, 400s that name the field."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server


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
    from tests.fixtures.server_fake_engine import wav_bytes

    files = [
        ("file", ("a.wav", wav_bytes(0.5), "audio/wav")),
        ("file", ("b.wav", wav_bytes(0.5), "audio/wav")),
    ]
    r = httpx.post(url + "/v1/audio/transcriptions", files=files, data={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
