"""Server-side request forgery: remote audio URLs can never reach internal addresses.

The fetcher (qwen_audio/server/remote.py) is tested directly and through the API. Local servers
on 127.0.0.1 stand in for the internet; they are reachable only because a test-only hook
(`unsafe_allowed_networks`) allows exactly 127.0.0.1/32, so every other internal address,
including other loopback addresses, must still be refused. DNS is replaced by a dict where a test
needs names.
"""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import threading
import time
import urllib.parse

import httpx
import pytest

from qwen_audio.server.app import create_app
from qwen_audio.server.protocol import APIError
from qwen_audio.server.remote import RemoteFetcher, is_forbidden, parse_ip_literal
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server, wav_bytes

WAV = wav_bytes(1.0)
HOOK = ["127.0.0.1/32"]  # the test-only allowance for the local servers


class Handler(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        Handler.hosts.append(self.headers.get("Host", ""))
        if url.path == "/audio.wav":
            self.reply(200, WAV)
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/chain":  # /chain?n=2 -> /chain?n=1 -> /chain?n=0 -> audio
            n = int(query["n"])
            self.send_response(302)
            self.send_header("Location", f"/chain?n={n - 1}" if n > 0 else "/audio.wav")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big":  # declares more than the limit
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 2**20))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
        elif url.path == "/endless":  # no Content-Length, more than the limit
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif url.path == "/slow":
            time.sleep(3)
            self.reply(200, WAV)
        else:
            self.reply(404, b"nope")

    def reply(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "audio/wav")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


def fetch(url: str, max_bytes: int = 2**20, **kw) -> bytes:
    kw.setdefault("resolver", fake_dns({}))
    return asyncio.run(RemoteFetcher(**kw).fetch(url, max_bytes))


def refused(url: str, code: str = "audio_url_not_allowed", **kw) -> APIError:
    with pytest.raises(APIError) as e:
        fetch(url, **kw)
    assert e.value.status == 400 and e.value.code == code, e.value.message
    return e.value


# ---- addresses ---------------------------------------------------------------------------------

FORBIDDEN_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8000/v1/models",
    "http://127.1/",  # short form
    "http://2130706433/",  # decimal
    "http://0x7f000001/",  # hex
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",  # octal
    "http://017700000001/",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of the metadata address
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
    "http://[64:ff9b::10.0.0.1]/",
    "http://[2001:0:4136:e378:8000:63bf:3f57:fefe]/",  # Teredo to 192.168.1.1
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",  # link-local with a zone
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",  # AWS metadata over IPv6
    "http://[ff02::1]/",
    "http://169.254.169.254/latest/meta-data/",  # AWS, GCP, Azure metadata
    "http://169.254.170.2/v2/credentials",  # ECS task credentials
    "http://100.100.100.200/latest/meta-data/",  # Alibaba metadata (carrier-grade NAT range)
    "http://192.0.0.192/",  # Oracle metadata (IETF protocol range)
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://198.18.0.1/",  # benchmarking
    "http://224.0.0.1/",  # multicast
    "http://240.0.0.1/",  # reserved
    "http://255.255.255.255/",
    "https://127.0.0.1/",
    "http://127.0.0.1./",  # trailing dot
]


@pytest.mark.parametrize("url", FORBIDDEN_URLS)
def test_internal_addresses_are_refused(url):
    calls: list[str] = []
    refused(url, resolver=fake_dns({}, calls))
    assert calls == []  # decided from the address itself, without DNS


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450::1"]
)
def test_public_addresses_are_allowed(ip):
    assert not is_forbidden(ipaddress.ip_address(ip))


def test_ip_spellings_are_read_as_a_resolver_would():
    for spelling in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1"):
        assert str(parse_ip_literal(spelling)) == "127.0.0.1"
    assert str(parse_ip_literal("fe80::1%eth0")) == "fe80::1"
    assert parse_ip_literal("example.com") is None
    assert parse_ip_literal("deadbeef.example") is None


DNS = {
    "metadata.google.internal": ["169.254.169.254"],
    "internal.example": ["10.0.0.5"],
    "v6.example": ["::1"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],  # one bad answer is enough to refuse
    "zero.example": ["0.0.0.0"],
    "public.example": ["93.184.216.34"],
}


@pytest.mark.parametrize("host", [h for h in DNS if h != "public.example"])
def test_names_resolving_to_internal_addresses_are_refused(host):
    refused(f"http://{host}/a.wav", resolver=fake_dns(DNS))


def test_unresolvable_name():
    refused("http://nowhere.example/a.wav", "audio_fetch_failed", resolver=fake_dns(DNS))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://public.example/a.wav",
        "gopher://public.example/",
        "dict://public.example:11211/",
        "data:audio/wav;base64,AAAA",
        "http://user:pw@public.example/a.wav",  # credentials
        "http:///a.wav",  # no host
    ],
)
def test_other_schemes_and_credentials_are_refused(url):
    with pytest.raises(APIError) as e:
        fetch(url, resolver=fake_dns(DNS))
    assert e.value.status == 400


def test_domain_allowlist():
    fetcher = RemoteFetcher(domains=["audio.example"], resolver=fake_dns({
        "audio.example": ["93.184.216.34"], "cdn.audio.example": ["93.184.216.35"],
        "audio.example.evil.org": ["93.184.216.36"], "evilaudio.example": ["93.184.216.37"],
    }))  # fmt: skip

    async def check(url):
        return await fetcher.check(url)

    target = asyncio.run(check("https://cdn.audio.example:8443/x/a.wav?v=1"))
    assert target.pinned_url == "https://93.184.216.35:8443/x/a.wav?v=1"
    assert target.host_header == "cdn.audio.example:8443" and target.host == "cdn.audio.example"
    assert asyncio.run(check("http://audio.example/a.wav")).host_header == "audio.example"
    for url in ("http://audio.example.evil.org/", "http://evilaudio.example/", "http://8.8.8.8/"):
        with pytest.raises(APIError, match="not in the allowed domains"):
            asyncio.run(check(url))


# ---- redirects, pinning, limits, against local servers -----------------------------------------


def test_allow_listed_local_server_is_fetched(origin):
    assert fetch(origin + "/audio.wav", unsafe_allowed_networks=HOOK) == WAV
    refused(origin + "/audio.wav")  # and without the hook it is loopback like any other


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/audio.wav",  # loopback outside the hook
        "http://2130706434:{port}/audio.wav",  # the same, in decimal
        "http://[::1]:{port}/audio.wav",
        "http://[::ffff:127.0.0.2]:{port}/audio.wav",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://internal.example:{port}/audio.wav",
        "file:///etc/passwd",
    ],
)
def test_redirects_are_checked_at_every_hop(origin, target):
    port = origin.rsplit(":", 1)[1]
    to = urllib.parse.quote(target.format(port=port), safe="")
    refused(f"{origin}/redirect?to={to}", unsafe_allowed_networks=HOOK, resolver=fake_dns(DNS))


def test_redirect_hops_are_capped(origin):
    kw = dict(unsafe_allowed_networks=HOOK, max_redirects=3)
    assert fetch(origin + "/chain?n=2", **kw) == WAV  # three redirects: allowed
    refused(origin + "/chain?n=3", "too_many_redirects", **kw)  # four: refused
    refused(origin + "/loop", "too_many_redirects", **kw)


def test_the_checked_address_is_the_one_dialled(origin):
    """DNS rebinding: the name is resolved once per hop, by us, and the connection goes to that
    address; the name still travels in the Host header. A second lookup would get 10.0.0.1, and
    the system resolver does not know the name at all."""
    port = origin.rsplit(":", 1)[1]
    calls: list[str] = []
    answers = iter([["127.0.0.1"]] + [["10.0.0.1"]] * 10)

    async def rebinding(host, port):
        calls.append(host)
        return next(answers)

    Handler.hosts.clear()
    data = fetch(
        f"http://rebind.test:{port}/audio.wav", unsafe_allowed_networks=HOOK, resolver=rebinding
    )
    assert data == WAV and calls == ["rebind.test"]
    assert Handler.hosts == [f"rebind.test:{port}"]


def test_environment_proxies_are_ignored(origin, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would re-resolve the name
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    assert fetch(origin + "/audio.wav", unsafe_allowed_networks=HOOK) == WAV


def test_size_and_time_limits(origin):
    kw = dict(unsafe_allowed_networks=HOOK)
    with pytest.raises(APIError) as e:
        fetch(origin + "/big", max_bytes=2**20, **kw)  # Content-Length says too much
    assert e.value.status == 413
    with pytest.raises(APIError) as e:
        fetch(origin + "/endless", max_bytes=2**20, **kw)  # counted while reading
    assert e.value.status == 413
    t0 = time.monotonic()
    refused(origin + "/slow", "audio_fetch_timeout", timeout_s=0.5, **kw)
    assert time.monotonic() - t0 < 2.5
    refused(origin + "/missing", "audio_fetch_failed", **kw)


# ---- through the API ---------------------------------------------------------------------------


def chat(url: str) -> dict:
    part = {"type": "audio_url", "audio_url": {"url": url}}
    return {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}]}


def test_through_the_api(origin):
    app = create_app(FakeEngine(), ServerSettings(allow_remote_audio=True))
    port = origin.rsplit(":", 1)[1]
    with live_server(app) as url:
        for bad in (
            "http://169.254.169.254/latest/meta-data/",
            f"http://localhost:{port}/audio.wav",
            f"http://[::1]:{port}/audio.wav",
            origin + "/audio.wav",  # loopback: no hook in a real server
        ):
            r = httpx.post(url + "/v1/chat/completions", json=chat(bad))
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] in ("audio_url_not_allowed", "audio_fetch_failed")
        # the test-only hook lets the local "internet" in; a redirect to loopback stays out
        app.state.handlers.media.fetcher = RemoteFetcher(unsafe_allowed_networks=HOOK)
        r = httpx.post(url + "/v1/chat/completions", json=chat(origin + "/audio.wav"))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "heard 1 audio(s) of 1.0 s: hi"
        to = urllib.parse.quote(f"http://127.0.0.2:{port}/audio.wav", safe="")
        r = httpx.post(url + "/v1/chat/completions", json=chat(f"{origin}/redirect?to={to}"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "audio_url_not_allowed"


def test_remote_audio_is_off_unless_enabled(origin):
    with live_server(create_app(FakeEngine(), ServerSettings())) as url:
        r = httpx.post(url + "/v1/chat/completions", json=chat("http://93.184.216.34/a.wav"))
        assert r.status_code == 400 and "--allow-remote-audio" in r.json()["error"]["message"]
