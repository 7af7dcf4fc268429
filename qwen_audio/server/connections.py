"""Time limits on the connection itself: no client can hold one (and the task behind it) forever
by sending its request slowly.

- A request's head (request line and headers) must be complete within `--read-timeout` of the
  connection opening or of the previous answer: uvicorn only times out a connection that sends
  nothing between requests (`--keep-alive-timeout`), so a head trickled a byte at a time, or
  half a head and then silence, held it for good. `HeadTimeoutH11` adds that deadline.
- A body must keep coming: each piece within `--read-timeout`, and the whole at no less than
  `--min-body-rate` on average after the first `--read-timeout` (`BodyTimeout`). A
  Content-Length larger than the body sent, or a body trickled at a few bytes a second, gets a
  408 and the connection is closed.
- At most `--max-connections` connections are served at once; further requests get a 503.
The head's size is bounded by h11 (16 KB), the body's by `BodyLimit`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings


class BodyTimedOut(Exception):
    """The body stopped arriving, or arrived slower than the minimum rate."""


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on every request head: armed when the connection
    opens and when an answer is complete (the next head may follow), disarmed when a head is in.
    Set `head_timeout_s` on a subclass (`head_timeout_protocol`)."""

    head_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_of: Any = None  # the request cycle whose head was last seen
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._head_seen()

    def on_response_complete(self) -> None:
        self._arm()  # first: a pipelined request's head may be handled inside
        super().on_response_complete()
        self._head_seen()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_seen(self) -> None:
        if self.cycle is not None and self.cycle is not self._head_of:  # a new head is in
            self._head_of = self.cycle
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutH11]:
    return type("HeadTimeoutH11", (HeadTimeoutH11,), {"head_timeout_s": seconds})


class BodyTimeout:
    """Times out receiving a request's body: each piece must arrive within `read_timeout_s`, and
    by then the body must have averaged `min_rate` bytes a second since `read_timeout_s` after
    the request began. Only while the body is incomplete: afterwards `receive()` waits for a
    disconnect, which may rightly take as long as a streamed answer."""

    def __init__(self, app: ASGIApp, read_timeout_s: float, min_rate: float):
        self.app = app
        self.read_timeout_s = read_timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        received = 0
        complete = False

        async def timed() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            now = time.monotonic()
            deadline = min(
                now + self.read_timeout_s,
                start + self.read_timeout_s + received / self.min_rate,
            )
            try:
                with anyio.fail_after(max(deadline - now, 0.0)):
                    message = await receive()
            except TimeoutError:
                raise BodyTimedOut() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
            else:
                complete = True  # http.disconnect
            return message

        await self.app(scope, timed, send)


def uvicorn_config(app: ASGIApp, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of `qwen-audio serve` (and of the tests' live servers)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=head_timeout_protocol(settings.read_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        # websocket messages past twice the realtime event limit close the connection (1009);
        # below that the session answers an oversized event with an error event and goes on
        ws_max_size=2 * settings.realtime_max_event_bytes,
        **options,
    )
