"""Errors that used to be swallowed now surface (issue 17): the server's queue count, the eval
server predictor's model name, and an engine that fails on every step."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from qwen_audio.eval.predictors import ServerPredictor
from qwen_audio.sampling import SamplingParams
from qwen_audio.server.engine_calls import Admission
from qwen_audio.server.metrics import Metrics
from qwen_audio.server.protocol import APIError
from qwen_audio.server.settings import ServerSettings


class Engine:
    def __init__(self, running: int | None):
        self.running = running

    def stats(self) -> dict:
        if self.running is None:
            raise RuntimeError("stats are broken")
        return {"running": self.running}


def test_admission_counts_waiting_requests_from_the_engine():
    admission = Admission(Engine(running=2), ServerSettings(max_queue=1), Metrics("m"))
    admission.in_flight = 2  # both in the running batch: nothing waits
    admission.admit()
    with pytest.raises(APIError) as refused:  # now one waits: the queue is full
        admission.admit()
    assert refused.value.status == 429


def test_admission_does_not_guess_when_the_engine_cannot_say():
    admission = Admission(Engine(running=None), ServerSettings(max_queue=1), Metrics("m"))
    with pytest.raises(RuntimeError, match="stats are broken"):
        admission.admit()
    assert admission.in_flight == 0


def predictor(handler) -> ServerPredictor:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return ServerPredictor("http://server/v1", client=client)


def test_server_predictor_takes_the_first_listed_model():
    listing = {"data": [{"id": "qwen2-audio"}, {"id": "other"}]}
    assert predictor(lambda r: httpx.Response(200, json=listing)).model == "qwen2-audio"


@pytest.mark.parametrize(
    "handler",
    [
        lambda r: httpx.Response(200, json={"data": []}),
        lambda r: httpx.Response(200, content=b"<html>not json</html>"),
        lambda r: httpx.Response(404, json={"error": "no such route"}),
    ],
    ids=["empty listing", "not json", "no /models"],
)
def test_server_predictor_without_a_model_listing_says_to_pass_server_model(handler):
    with pytest.raises(ValueError, match="--server-model"):
        predictor(handler)


def test_server_predictor_reports_an_unreachable_server():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ValueError, match="connection refused"):
        predictor(refuse)
    # With --server-model nothing is asked up front.
    client = httpx.Client(transport=httpx.MockTransport(refuse))
    assert ServerPredictor("http://server/v1", model="m", client=client).model == "m"


@pytest.fixture
def async_llm(checkpoints):
    from qwen_audio.async_llm import AsyncLLM

    llm = AsyncLLM(checkpoints("mha"), dtype="float32")
    yield llm
    llm.shutdown()


def ask(llm) -> str:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    params = SamplingParams(temperature=0, max_tokens=2)
    return asyncio.run(asyncio.wait_for(llm.chat(messages, params), timeout=60)).text


def test_an_engine_that_fails_every_step_stops_instead_of_spinning(async_llm):
    calls = []

    def broken_step():
        calls.append(1)
        raise RuntimeError("kernel exploded")

    async_llm.engine.step = broken_step
    with pytest.raises(RuntimeError, match="generation failed: kernel exploded"):
        ask(async_llm)
    async_llm._thread.join(timeout=30)
    assert not async_llm._thread.is_alive()
    assert len(calls) <= 3  # the failed step and its failed cleanup; no busy loop
    with pytest.raises(RuntimeError, match="engine stopped after repeated failures"):
        ask(async_llm)


def test_one_failed_step_fails_its_requests_and_the_engine_goes_on(async_llm):
    real_step = async_llm.engine.step
    failures = []

    def flaky_step():
        if not failures:
            failures.append(1)
            raise RuntimeError("one bad step")
        return real_step()

    async_llm.engine.step = flaky_step
    with pytest.raises(RuntimeError, match="one bad step"):
        ask(async_llm)
    assert isinstance(ask(async_llm), str) and async_llm._thread.is_alive()
