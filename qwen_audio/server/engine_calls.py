"""The server's side of an engine request: deadline, cancellation, error mapping, admission."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request

from .metrics import Metrics
from .protocol import APIError
from .settings import ServerSettings

log = logging.getLogger("qwen_audio.server")
T = TypeVar("T")

# Engine exceptions for bad input (all ValueError subclasses), by class name so the server does
# not import the modules that define them.
ENGINE_ERROR_CODES = {
    "ContextLengthError": "context_length_exceeded",
    "AudioError": "invalid_audio",
    "PromptError": "invalid_prompt",
}


def engine_error(e: ValueError) -> APIError:
    code = ENGINE_ERROR_CODES.get(type(e).__name__, "invalid_request")
    return APIError(400, str(e) or type(e).__name__, code=code)


class ClientGone(Exception):
    """The client closed the connection; nobody is left to answer."""


class Generation:
    """One engine request as an iterator of outputs with a deadline. `close()` ends it early:
    it closes the engine's async generator and aborts the request, so its slot and KV memory
    are freed at once (a client that hung up must not keep the engine busy)."""

    def __init__(self, engine: Any, stream: AsyncIterator, request_id: str, deadline: float):
        self.engine = engine
        self.stream = stream
        self.request_id = request_id
        self.deadline = deadline  # time.monotonic() value
        self.finished = False

    async def next(self) -> Any | None:
        """The next output, or None after the last one."""
        if self.finished:
            return None
        try:
            with anyio.fail_after(max(self.deadline - time.monotonic(), 0.0)):
                out = await self.stream.__anext__()
        except StopAsyncIteration:
            self.finished = True
            return None
        except TimeoutError:
            raise APIError(504, "request timed out", type="timeout", code="timeout") from None
        except ValueError as e:
            self.finished = True
            raise engine_error(e) from None
        if out.finish_reason is not None:
            self.finished = True
        return out

    async def drain(self, put: Callable[[Any], None]) -> None:
        """Every output handed to `put`, in order, under one deadline for the whole stream:
        `next()` sets one per output, which for a file's many streams of short outputs costs the
        event loop more than the rest of their handling. Errors as in `next()`."""
        try:
            with anyio.fail_after(max(self.deadline - time.monotonic(), 0.0)):
                async for out in self.stream:
                    if out.finish_reason is not None:
                        self.finished = True
                    put(out)
        except TimeoutError:
            raise APIError(504, "request timed out", type="timeout", code="timeout") from None
        except ValueError as e:
            self.finished = True
            raise engine_error(e) from None
        self.finished = True

    async def close(self) -> None:
        # Shielded: this runs while the request is being cancelled (client disconnect).
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except Exception:
                log.exception("closing engine stream %s", self.request_id)
            if not self.finished:
                try:
                    await self.engine.abort(self.request_id)
                except Exception:
                    log.exception("aborting engine request %s", self.request_id)
                self.finished = True


async def wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
        await anyio.sleep(0.05)  # a stray body message; the body was read already


async def unless_disconnected(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work()`, cancelling it if the client disconnects first (then raise ClientGone)."""
    result: list[T] = []
    error: Exception | None = None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await wait_for_disconnect(request)
        gone = True
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:  # caught here, or the task group would wrap it in an ExceptionGroup
            result.append(await work())
        except Exception as e:
            error = e
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    if gone or not result:
        raise ClientGone()
    return result[0]


class Slot:
    """An admitted request. Released exactly once, when its answer is complete."""

    def __init__(self, admission: Admission):
        self.admission = admission
        self.released = False
        self.t0 = time.monotonic()
        self.deadline = self.t0 + admission.settings.request_timeout_s

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.in_flight -= 1
            self.admission.metrics.in_flight = self.admission.in_flight


class Admission:
    """Bounded queue: a request is refused with 429 when `max_queue` admitted requests are
    already waiting (admitted, but not in the engine's running batch)."""

    def __init__(self, engine: Any, settings: ServerSettings, metrics: Metrics):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.in_flight = 0

    def running(self) -> int:
        # No fallback: a wrong count here would silently turn the queue limit off or on.
        return int(self.engine.stats()["running"])

    def waiting(self) -> int:
        """Admitted requests not yet running, or the engine's own queue if that is longer: one
        transcription is one HTTP request but one engine request per segment."""
        stats = self.engine.stats()
        return max(self.in_flight - int(stats["running"]), int(stats.get("waiting", 0)))

    def admit(self) -> Slot:
        waiting = self.waiting()
        if waiting >= self.settings.max_queue:
            self.metrics.rejected_full += 1
            raise APIError(
                429,
                f"server busy: {waiting} requests are waiting; retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        self.in_flight += 1
        self.metrics.in_flight = self.in_flight
        return Slot(self)
