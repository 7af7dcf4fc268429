"""`AsyncLLM`: the engine behind an asyncio interface, for the server.

One background thread owns the engine and steps it while there is work; coroutines submit requests
and receive deltas through per-request asyncio queues. Concurrent requests therefore share steps
(continuous batching), and closing a stream (a client that went away) aborts its request, which
frees its memory at the next step boundary.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from . import openmp
from .llm import EngineFrontend, build_request
from .outputs import Delta, OutputBuilder, RequestOutput
from .prompt import RenderedPrompt
from .sampling import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_FAILED_STEPS = 3  # engine steps failing in a row: the engine is broken, not one request


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    builder: OutputBuilder


def _deliver(items: list[tuple[asyncio.Queue, Delta]]) -> None:
    for queue, delta in items:
        queue.put_nowait(delta)


def default_prepare_workers() -> int:
    """Half the cores, 1 to 4: the engine thread keeps the other half while requests prepare."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class AsyncLLM(EngineFrontend):
    """The engine on a background thread; takes the same options as `LLM`, and
    `prepare_workers`: how many requests may prepare (decode, resample, extract features,
    tokenize) at once, on their own threads (default: `default_prepare_workers()`)."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        prepare_workers: int | None = None,
        **options,
    ) -> None:
        super().__init__(model, **options)
        # Only the engine thread computes in parallel: the loading thread's OpenMP team goes
        # and the preparation threads run serially (see `qwen_audio.openmp`: with more teams
        # than cores every engine step waits on sleeping workers).
        openmp.release_team()
        # Request preparation is CPU work that must neither hold the event loop nor starve the
        # engine thread: it runs on this bounded pool (tokenizers, soxr, libsndfile, FFmpeg and
        # torch release the GIL, so threads run it in parallel), and the rest of the requests
        # wait their turn in its queue.
        self._prepare_pool = ThreadPoolExecutor(
            prepare_workers or default_prepare_workers(),
            thread_name_prefix="qwen-audio-prepare",
            initializer=openmp.serial_in_this_thread,
        )
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._broken: Exception | None = None  # why the engine thread stopped, if it did
        self._thread = threading.Thread(target=self._loop, name="qwen-audio-engine", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        return self.engine.stats()

    async def run_prepare(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the bounded preparation pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare_pool, functools.partial(fn, *args))

    # ---- preparing (several requests may prepare before any enters the engine) --------------
    async def prepare_chat(self, messages: list[dict]) -> RenderedPrompt:
        """A conversation decoded, featurized and tokenized on the preparation pool, for
        `stream_prompt`. A caller with many requests (a file's segments) prepares them all
        first, so they enter the engine together and its first step batches them all."""
        return await self.run_prepare(self.renderer.render_chat, messages)

    async def prepare_raw(self, prompt: str, audios: list | None = None) -> RenderedPrompt:
        """`prepare_chat` for a raw (base-model) prompt with its audios."""
        return await self.run_prepare(self.renderer.render_raw, prompt, list(audios or []))

    # ---- streaming ----------------------------------------------------------------------
    async def stream_chat(
        self,
        messages: list[dict],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
    ) -> AsyncIterator[Delta]:
        prompt = await self.prepare_chat(messages)
        async for delta in self.stream_prompt(prompt, params, request_id=request_id):
            yield delta

    async def stream_generate(
        self,
        prompt: str,
        audios: list | None = None,
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
    ) -> AsyncIterator[Delta]:
        rendered = await self.prepare_raw(prompt, audios)
        async for delta in self.stream_prompt(rendered, params, request_id=request_id):
            yield delta

    async def stream_prompt(
        self,
        prompt: RenderedPrompt,
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
    ) -> AsyncIterator[Delta]:
        if self._closed:
            raise RuntimeError("the engine is shut down")
        req, builder = build_request(self.checkpoint, prompt, params, request_id)
        rid = req.request_id
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), builder)
        with self._streams_lock:
            if rid in self._streams:
                raise ValueError(f"request id {rid!r} is already running")
            self._streams[rid] = stream
        finished = False
        try:
            if self._broken is not None:  # checked after registering: see _stop
                raise RuntimeError(
                    f"the engine stopped after repeated failures ({self._broken}); restart it"
                )
            self.engine.add_request(req)  # raises ContextLengthError before anything runs
            self._wake.set()
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    break
        finally:
            with self._streams_lock:
                self._streams.pop(rid, None)
            if not finished:
                self.engine.abort(rid)
                self._wake.set()

    async def chat(
        self, messages: list[dict], params: SamplingParams | None = None
    ) -> RequestOutput:
        """The whole answer at once (collects the stream)."""
        text, ids, last = [], [], None
        async for d in self.stream_chat(messages, params):
            text.append(d.text)
            ids += d.token_ids
            last = d
        return RequestOutput(
            last.request_id,
            "".join(text),
            ids,
            last.finish_reason,
            last.prompt_tokens,
            last.audio_tokens,
            last.cached_tokens,
        )

    async def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._wake.set()

    def shutdown(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    # ---- the engine thread --------------------------------------------------------------
    def _loop(self) -> None:
        failed = 0
        while not self._closed:
            if not self.engine.has_work():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as err:  # a bug or OOM: fail the running requests, keep serving
                failed += 1
                log.exception("engine step failed (%d in a row)", failed)
                if not self._fail_all(err) or failed >= MAX_FAILED_STEPS:
                    # Stepping a broken engine again would only fail again, in a busy loop.
                    self._stop(err)
                    return
                continue
            failed = 0
            # A step's deltas reach each event loop in one call: a step of 64 sequences would
            # otherwise wake the loop 64 times, each wake-up taking the GIL from this thread.
            deliveries: dict[asyncio.AbstractEventLoop, list] = {}
            for out in outputs:
                with self._streams_lock:
                    stream = self._streams.get(out.request_id)
                if stream is None or stream.builder.finished:
                    continue
                delta = stream.builder.push(out)
                if stream.builder.finished and not out.finished:
                    self.engine.abort(out.request_id)  # a stop string ended it first
                deliveries.setdefault(stream.loop, []).append((stream.queue, delta))
            for loop, items in deliveries.items():
                loop.call_soon_threadsafe(_deliver, items)

    def _stop(self, err: Exception) -> None:
        """The engine cannot recover: refuse new requests and fail every waiting one."""
        log.error("the engine stopped after repeated failures (%s); new requests are refused", err)
        self._broken = err  # set first: a stream registered after the next line sees it
        self._fail_all(err, clean=False)

    def _fail_all(self, err: Exception, *, clean: bool = True) -> bool:
        """Fail the running requests; False when the engine could not release them either."""
        with self._streams_lock:
            streams = list(self._streams.items())
        for rid, stream in streams:
            self.engine.abort(rid)
            stream.loop.call_soon_threadsafe(
                stream.queue.put_nowait, RuntimeError(f"generation failed: {err}")
            )
        if not clean:
            return False
        try:
            self.engine.step()  # apply the aborts so the memory is released
        except Exception:
            log.exception("engine cleanup failed")
            return False
        return True
