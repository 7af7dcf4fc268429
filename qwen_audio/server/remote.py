"""Fetching remote audio (`--allow-remote-audio`) without server-side request forgery.

vLLM and SGLang shipped SSRF holes in exactly this place (CVE-2025-6242). The rules here:
- only http(s); no credentials in the URL; an optional domain allowlist (a domain allows its
  subdomains);
- every address the host resolves to must be public: no loopback, private, link-local (cloud
  metadata), carrier-grade NAT, multicast, reserved or unspecified (`0.0.0.0`) ranges, in any
  IPv4 spelling (`2130706433`, `0x7f.1`, `0177.0.0.1`), in IPv6, or inside IPv6 (IPv4-mapped,
  6to4, Teredo, NAT64);
- the connection goes to the address that was checked (the URL is rewritten to it; the Host
  header and TLS SNI/certificate check keep the name), so a second DNS answer cannot move it;
- redirects are followed by hand, each hop checked again like the first, at most `max_redirects`;
- the body is read with a byte limit (also against a lying Content-Length), without
  decompression, and the whole fetch has one time limit; no proxies from the environment.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

from .protocol import APIError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Never dialled, whatever Python's `is_global` says in a given version.
BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT; 100.100.100.200 is Alibaba's metadata service
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local; 169.254.169.254 is the AWS/GCP/Azure metadata service
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments; 192.0.0.192 is Oracle's metadata service
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",  # includes 255.255.255.255
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
        "64:ff9b:1::/48",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",  # unique local; fd00:ec2::254 is the AWS metadata service over IPv6
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the last 32 bits are an IPv4 address


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address can deliver to (mapped, 6to4, Teredo, NAT64)."""
    if ip.version == 4:
        return []
    out = []
    if ip.ipv4_mapped:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour:
        out.append(ip.sixtofour)
    if ip.teredo:
        out.extend(ip.teredo)
    if ip in NAT64:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def is_forbidden(ip: IPAddress) -> bool:
    for inner in embedded_ipv4(ip):
        if is_forbidden(inner):
            return True
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or any(ip.version == n.version and ip in n for n in BLOCKED_NETWORKS)
    )


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host names without DNS, in any spelling a resolver would accept:
    `127.0.0.1`, `::1`, `[::ffff:127.0.0.1]`, `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:  # inet_aton reads the legacy decimal, octal, hex and short forms, as libc does
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to `ip`, send `host_header`, verify TLS against `host`."""

    url: str  # the URL as asked for
    scheme: str
    host: str
    port: int
    ip: IPAddress
    host_header: str
    path: str  # path and query

    @property
    def pinned_url(self) -> str:
        ip = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return f"{self.scheme}://{ip}:{self.port}{self.path}"


def url_error(message: str, code: str = "audio_url_not_allowed", param: str | None = None):
    return APIError(400, message, code=code, param=param)


class RemoteFetcher:
    def __init__(
        self,
        *,
        domains: Iterable[str] = (),
        timeout_s: float = 10.0,
        max_redirects: int = 3,
        resolver: Resolver = system_resolver,
        unsafe_allowed_networks: Iterable[str] = (),
    ):
        # A domain entry allows itself and its subdomains.
        self.domains = [d.lower().strip(".") for d in domains if d.strip(".")]
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.resolver = resolver
        # For tests only (a local file server must be reachable); not on the command line.
        self.unsafe_allowed = [ipaddress.ip_network(n) for n in unsafe_allowed_networks]

    def _allowed_ip(self, ip: IPAddress) -> bool:
        if any(ip.version == n.version and ip in n for n in self.unsafe_allowed):
            return True
        return not is_forbidden(ip)

    def _allowed_domain(self, host: str) -> bool:
        if not self.domains:
            return True
        return any(host == d or host.endswith("." + d) for d in self.domains)

    async def check(self, url: str, param: str | None = None) -> Target:
        """Parse, allowlist and resolve `url`; every address must be allowed."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise url_error(f"invalid audio URL: {e}", "invalid_url", param) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise url_error(f"audio URL scheme {scheme!r} is not allowed", param=param)
        if parts.username is not None or parts.password is not None:
            raise url_error("credentials in audio URLs are not allowed", param=param)
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise url_error("audio URL has no host", "invalid_url", param)
        try:
            host_ascii = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise url_error("audio URL host is not a valid name", "invalid_url", param) from None
        if not self._allowed_domain(host_ascii):
            raise url_error(f"audio URL host {host!r} is not in the allowed domains", param=param)
        port = port or (443 if scheme == "https" else 80)

        literal = parse_ip_literal(host_ascii)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                found = await self.resolver(host_ascii, port)
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
            except (OSError, ValueError, UnicodeError):
                addresses = []
            if not addresses:
                raise url_error(f"cannot resolve audio URL host {host!r}", "audio_fetch_failed")
        for ip in addresses:
            if not self._allowed_ip(ip):
                raise url_error(
                    f"audio URL host {host!r} resolves to a non-public address", param=param
                )

        default_port = port == (443 if scheme == "https" else 80)
        name = f"[{host_ascii}]" if ":" in host_ascii else host_ascii
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(
            url=url,
            scheme=scheme,
            host=host_ascii,
            port=port,
            ip=addresses[0],
            host_header=name if default_port else f"{name}:{port}",
            path=path,
        )

    async def fetch(self, url: str, max_bytes: int, param: str | None = None) -> bytes:
        try:
            return await asyncio.wait_for(self._fetch(url, max_bytes, param), self.timeout_s)
        except asyncio.TimeoutError:
            raise url_error(
                f"fetching the audio URL took longer than {self.timeout_s:g} s",
                "audio_fetch_timeout",
                param,
            ) from None
        except httpx.HTTPError as e:
            raise url_error(
                f"fetching the audio URL failed: {type(e).__name__}", "audio_fetch_failed", param
            ) from None

    async def _fetch(self, url: str, max_bytes: int, param: str | None) -> bytes:
        timeout = httpx.Timeout(self.timeout_s)
        for _ in range(self.max_redirects + 1):
            target = await self.check(url, param)
            # trust_env=False: a proxy would resolve the name again, undoing the check.
            async with httpx.AsyncClient(trust_env=False, timeout=timeout) as client:
                request = client.build_request(
                    "GET",
                    target.pinned_url,
                    headers={"Host": target.host_header, "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
                )
                response = await client.send(request, stream=True, follow_redirects=False)
                try:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise url_error("audio URL redirect without a Location", param=param)
                        url = urllib.parse.urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise url_error(
                            f"fetching the audio URL gave HTTP {response.status_code}",
                            "audio_fetch_failed",
                            param,
                        )
                    return await read_limited(response, max_bytes, param)
                finally:
                    await response.aclose()
        raise url_error(
            f"audio URL redirected more than {self.max_redirects} times",
            "too_many_redirects",
            param,
        )


async def read_limited(response: httpx.Response, max_bytes: int, param: str | None) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes, param)
    body = bytearray()
    async for chunk in response.aiter_raw():  # raw: no decompression bombs
        body += chunk
        if len(body) > max_bytes:
            raise too_large(max_bytes, param)
    return bytes(body)


def too_large(max_bytes: int, param: str | None = None) -> APIError:
    return APIError(
        413,
        f"audio is larger than the limit of {max_bytes / 2**20:g} MB per request",
        param=param,
        code="audio_too_large",
    )
