"""/v1/realtime: realtime transcription sessions (OpenAI's Realtime API), issue 18 items 5-6.

The input buffer and its turn detection are checked on espeak-ng speech; the websocket protocol
and every kind of bad input against the fake engine (fast, deterministic: it answers with what
reached it, e.g. "heard 1 audio(s) of 2.0 s: Transcribe the speech."); the official `openai`
client's realtime connection against the demo model on real speech, 8 sessions at once, and the
same text as /v1/audio/transcriptions for the same audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time

import numpy as np
import pytest
from openai import AsyncOpenAI, OpenAI
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from qwen_audio.asr.streaming import (
    LiveBuffer,
    SpeechStarted,
    SpeechStopped,
    TurnDetection,
    Utterance,
)
from qwen_audio.audio_io import load_audio
from qwen_audio.bench.live_speech import RATE, SENTENCES, conversation, espeak_pcm16, wav24
from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is missing (apt-get install espeak-ng)"
)
CHUNK = RATE // 10  # 100 ms appends, as a microphone would send


@pytest.fixture(scope="module")
def talk():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is missing")
    return conversation()


def pieces(pcm: np.ndarray, size: int = CHUNK):
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size].tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- the input buffer ----------------------------------------------------------------------


@needs_espeak
def test_turn_detection_finds_each_sentence(talk):
    pcm, truth = talk
    buf = LiveBuffer(TurnDetection(), max_seconds=20.0)
    events = [e for chunk in pieces(pcm) for e in buf.append(chunk)]
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, SpeechStopped, Utterance] * len(truth)
    utterances = [e for e in events if isinstance(e, Utterance)]
    for u, (start, end), started in zip(utterances, truth, events[::3]):
        assert u.reason == "vad"
        assert start - 0.4 <= u.start_ms / 1000 <= start - 0.2  # 300 ms of prefix padding
        assert end < u.end_ms / 1000 <= end + 0.3
        assert started.start_ms == u.start_ms
        assert len(u.samples) == (u.end_ms - u.start_ms) * 16
    # idle, it keeps only the prefix padding (and less than a frame) in memory
    assert buf.buffered_samples <= 0.31 * 16000


def test_silence_and_a_click_are_no_speech():
    buf = LiveBuffer(TurnDetection(), max_seconds=20.0)
    rng = np.random.default_rng(0)
    hum = (rng.normal(0, 0.003, 5 * RATE) * 32768).astype("<i2")  # -50 dBFS of noise
    click = hum.copy()
    click[RATE : RATE + 600] = 20000  # 25 ms
    assert [e for chunk in pieces(np.concatenate([hum, click])) for e in buf.append(chunk)] == []
    with pytest.raises(ValueError, match="no speech"):
        buf.commit()


def test_speech_longer_than_the_limit_is_cut_and_nothing_is_lost():
    t = np.arange(9 * RATE) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 20000
    pcm = np.concatenate([np.zeros(RATE, "<i2"), tone.astype("<i2"), np.zeros(RATE, "<i2")])
    buf = LiveBuffer(TurnDetection(), max_seconds=4.0)
    events = [e for chunk in pieces(pcm) for e in buf.append(chunk)]
    utterances = [e for e in events if isinstance(e, Utterance)]
    *cuts, last = [u.reason for u in utterances]
    assert last == "vad" and set(cuts) == {"max_length"} and 2 <= len(cuts) <= 4
    assert all(len(u.samples) <= 4 * 16000 for u in utterances)
    for a, b in zip(utterances, utterances[1:]):  # each starts where the one before ended
        assert a.end_ms == b.start_ms
    assert utterances[0].start_ms == 700 and 9900 <= utterances[-1].end_ms <= 10200


def test_without_turn_detection_a_full_buffer_commits_itself():
    buf = LiveBuffer(None, max_seconds=2.0)
    pcm = (np.random.default_rng(1).normal(0, 0.1, 5 * RATE) * 32768).astype("<i2")
    events = [e for chunk in pieces(pcm, RATE) for e in buf.append(chunk)]
    assert [(e.start_ms, e.end_ms, e.reason) for e in events] == [
        (0, 2000, "max_length"),
        (2000, 4000, "max_length"),
    ]
    (last,) = buf.commit()
    assert (last.start_ms, last.end_ms) == (4000, 5000)
    with pytest.raises(ValueError, match="at least 100 ms"):
        buf.commit()
    with pytest.raises(ValueError, match="whole number"):
        buf.append(b"\x00\x01\x02")


@needs_espeak
def test_a_committed_buffer_is_the_uploaded_file_sample_for_sample():
    pcm = espeak_pcm16(SENTENCES[1])
    buf = LiveBuffer(None, max_seconds=20.0)
    for chunk in pieces(pcm, 1234 * 2):  # odd-sized pieces
        assert buf.append(chunk) == []
    (utterance,) = buf.commit()
    np.testing.assert_array_equal(utterance.samples, load_audio(wav24(pcm)))


# ---- the protocol, against the fake engine -------------------------------------------------


@pytest.fixture
def engine():
    return FakeEngine()


def serve(engine, **settings):
    return live_server(create_app(engine, ServerSettings(**settings)))


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"


def until(ws, kind: str, timeout: float = 10.0) -> list[dict]:
    """Events up to and including the first of type `kind`."""
    seen = []
    while True:
        event = json.loads(ws.recv(timeout=timeout))
        seen.append(event)
        if event["type"] == kind:
            return seen


def manual(ws) -> None:
    ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription",
            "audio": {"input": {"turn_detection": None}}}}))  # fmt: skip
    until(ws, "session.updated")


def test_manual_commit_transcribes_with_the_asr_prompt(engine):
    with serve(engine) as url, connect(ws_url(url)) as ws:
        created = json.loads(ws.recv(timeout=5))
        assert created["type"] == "session.created"
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        update = {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None,
            "transcription": {"model": "whatever", "language": "fr", "prompt": "a meeting"}}}}  # fmt: skip
        ws.send(json.dumps({"type": "session.update", "session": update}))
        (updated,) = until(ws, "session.updated")
        audio_input = updated["session"]["audio"]["input"]
        assert audio_input["turn_detection"] is None
        assert audio_input["transcription"]["language"] == "fr"
        pcm = (np.random.default_rng(2).normal(0, 0.1, 2 * RATE) * 32768).astype("<i2")
        for chunk in pieces(pcm):
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(chunk)}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["input_audio_buffer.committed", "conversation.item.added"]
    item = events[0]["item_id"]
    assert {e["item_id"] for e in events if "transcription" in e["type"]} == {item}
    deltas = "".join(e["delta"] for e in events if e["type"].endswith(".delta"))
    done = events[-1]
    assert done["transcript"] == deltas
    assert done["transcript"] == (
        "heard 1 audio(s) of 2.0 s: Transcribe the speech. The speech is in French.\n"
        "Context: a meeting"
    )
    assert done["usage"]["type"] == "tokens" and done["usage"]["output_tokens"] > 0


def test_beta_dialect(engine):
    headers = {"OpenAI-Beta": "realtime=v1"}
    with serve(engine) as url, connect(ws_url(url), additional_headers=headers) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "transcription_session.created"
        session = {"input_audio_format": "pcm16", "turn_detection": None,
                   "input_audio_transcription": {"model": "whisper-1", "language": "en"}}  # fmt: skip
        ws.send(json.dumps({"type": "transcription_session.update", "session": session}))
        (updated,) = until(ws, "transcription_session.updated")
        assert updated["session"]["input_audio_format"] == "pcm16"
        assert updated["session"]["turn_detection"] is None
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(9600))}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = until(ws, "conversation.item.input_audio_transcription.completed")
    assert [e["type"] for e in events][:2] == [
        "input_audio_buffer.committed",
        "conversation.item.created",
    ]
    assert events[-1]["transcript"].startswith("heard 1 audio(s) of 0.2 s")


def bad_events() -> list[tuple[object, str]]:
    """(what is sent, the error code that answers it)."""
    update = lambda s: {"type": "session.update", "session": s}  # noqa: E731
    ga = lambda i: update({"type": "transcription", "audio": {"input": i}})  # noqa: E731
    return [
        (b"\x00\x01binary", "invalid_event"),
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ({"no": "type"}, "invalid_event"),
        ({"type": "what.ever"}, "invalid_event"),
        ({"type": "response.create"}, "unsupported_event"),
        ({"type": "input_audio_buffer.append"}, "invalid_value"),
        ({"type": "input_audio_buffer.append", "audio": "***not base64***"}, "invalid_audio"),
        ({"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03")}, "invalid_audio"),
        (
            {"type": "input_audio_buffer.append", "audio": b64(wav24(np.zeros(100, "<i2")))},
            "invalid_audio",
        ),  # fmt: skip
        ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty"),
        (update({"type": "realtime"}), "invalid_value"),
        (update({"input_audio_format": "g711_ulaw"}), "unsupported_audio_format"),
        (ga({"format": {"type": "audio/pcmu"}}), "unsupported_audio_format"),
        (ga({"format": {"type": "audio/pcm", "rate": 16000}}), "unsupported_audio_format"),
        (ga({"turn_detection": {"type": "semantic_vad"}}), "unsupported_turn_detection"),
        (ga({"turn_detection": {"type": "server_vad", "threshold": 2}}), "invalid_value"),
        (ga({"turn_detection": {"silence_duration_ms": "long"}}), "invalid_value"),
        (ga({"transcription": {"language": "english please"}}), "invalid_value"),
        (ga({"transcription": {"prompt": "x" * 5000}}), "invalid_value"),
        (ga("not an object"), "invalid_value"),
    ]


@pytest.mark.parametrize("turn", ["server_vad", "manual"])
def test_bad_events_get_error_events_and_the_session_goes_on(engine, turn):
    with serve(engine, realtime_max_event_kb=64) as url, connect(ws_url(url)) as ws:
        until(ws, "session.created")
        if turn == "manual":
            manual(ws)
        for i, (sent, code) in enumerate(bad_events()):
            tagged = isinstance(sent, dict)
            ws.send(json.dumps({**sent, "event_id": f"ev{i}"}) if tagged else sent)
            (error,) = until(ws, "error")
            assert error["error"]["code"] == code, (sent, error)
            assert error["error"]["message"]
            assert error["error"]["event_id"] == (f"ev{i}" if tagged else None)
        # an append over --realtime-max-event-kb is refused whole, the session goes on
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(60_000))}))
        (error,) = until(ws, "error")
        assert error["error"]["code"] == "event_too_large"
        # and the session still transcribes
        manual(ws)
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(48_000))}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = until(ws, "conversation.item.input_audio_transcription.completed")[-1]
        assert done["transcript"].startswith("heard 1 audio(s) of 1.0 s")
        # a frame far past the limit closes the connection (1009: message too big)
        ws.send("x" * 200_000)
        with pytest.raises(ConnectionClosed) as closed:
            until(ws, "never", timeout=5)
        assert closed.value.rcvd.code == 1009


def test_clear_drops_the_buffer(engine):
    with serve(engine) as url, connect(ws_url(url)) as ws:
        until(ws, "session.created")
        manual(ws)
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(48_000))}))
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        until(ws, "input_audio_buffer.cleared")
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert until(ws, "error")[-1]["error"]["code"] == "input_audio_buffer_commit_empty"


def test_a_long_buffer_is_cut_and_transcribed_not_truncated(engine):
    with serve(engine, realtime_max_utterance_seconds=2.0) as url, connect(ws_url(url)) as ws:
        until(ws, "session.created")
        manual(ws)
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(5 * 48000))}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        texts = {}
        while len(texts) < 3:
            e = json.loads(ws.recv(timeout=10))
            if e["type"].endswith("transcription.completed"):
                texts[e["item_id"]] = e["transcript"]
    assert sorted(t.split(":")[0] for t in texts.values()) == [
        "heard 1 audio(s) of 1.0 s",
        "heard 1 audio(s) of 2.0 s",
        "heard 1 audio(s) of 2.0 s",
    ]


def test_session_limit(engine):
    with serve(engine, realtime_max_sessions=1) as url, connect(ws_url(url)) as first:
        until(first, "session.created")
        with connect(ws_url(url)) as second:
            error = json.loads(second.recv(timeout=5))
            assert error["type"] == "error"
            assert error["error"]["code"] == "session_limit_reached"
            with pytest.raises(ConnectionClosed) as closed:
                second.recv(timeout=5)
            assert closed.value.rcvd.code == 1013
        first.send(json.dumps({"type": "input_audio_buffer.clear"}))
        until(first, "input_audio_buffer.cleared")  # the first is unaffected
    app = create_app(engine, ServerSettings(realtime_max_sessions=1))
    with live_server(app) as url:
        for _ in range(3):  # a closed session frees its place (once the server saw the close)
            with connect(ws_url(url)) as ws:
                until(ws, "session.created")
            deadline = time.monotonic() + 5
            while app.state.realtime.open and time.monotonic() < deadline:
                time.sleep(0.01)


def test_idle_session_is_closed(engine):
    with serve(engine, realtime_idle_timeout_s=0.3) as url, connect(ws_url(url)) as ws:
        until(ws, "session.created")
        assert until(ws, "error")[-1]["error"]["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def slow_session(ws) -> None:
    """Manual commits; the fake engine answers "[slow]" prompts at 20 ms a token."""
    until(ws, "session.created")
    ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription",
            "audio": {"input": {"turn_detection": None,
                                "transcription": {"prompt": "[slow]"}}}}}))  # fmt: skip
    until(ws, "session.updated")


def commit_a_second(ws) -> None:
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(bytes(48_000))}))
    ws.send(json.dumps({"type": "input_audio_buffer.commit"}))


def test_a_client_that_leaves_mid_transcription_has_it_aborted(engine):
    app = create_app(engine, ServerSettings())
    with live_server(app) as url:
        with connect(ws_url(url)) as ws:
            slow_session(ws)
            commit_a_second(ws)
            until(ws, "conversation.item.input_audio_transcription.delta")
            assert len(engine.running) == 1
        deadline = time.monotonic() + 5
        while (engine.running or app.state.realtime.open) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not engine.running and app.state.realtime.open == 0
        assert len(engine.aborted) == 1 and engine.aborted == engine.closed
        assert app.state.handlers.admission.in_flight == 0


def test_too_many_pending_transcriptions(engine):
    with serve(engine, realtime_max_pending=1) as url, connect(ws_url(url)) as ws:
        slow_session(ws)
        commit_a_second(ws)
        commit_a_second(ws)
        failed = until(ws, "conversation.item.input_audio_transcription.failed")[-1]
        assert failed["error"]["code"] == "too_many_pending"


def test_key_and_origin_checks(engine):
    with serve(engine, api_key="sesame") as url:
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(url))
        assert refused.value.response.status_code == 401
        assert b"invalid_api_key" in refused.value.response.body
        with connect(ws_url(url), additional_headers={"Authorization": "Bearer sesame"}) as ws:
            until(ws, "session.created")
        protocols = ["realtime", "openai-insecure-api-key.sesame"]
        with connect(ws_url(url), subprotocols=protocols) as ws:  # how a browser sends it
            assert ws.subprotocol == "realtime"
            until(ws, "session.created")
        key = {"Authorization": "Bearer sesame"}
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(url), additional_headers=key, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        with connect(ws_url(url), additional_headers=key, origin=url) as ws:
            until(ws, "session.created")


# ---- the official client against the demo model --------------------------------------------


@pytest.fixture(scope="module")
def demo_server():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is missing")
    from qwen_audio.async_llm import AsyncLLM

    engine = AsyncLLM(None, dtype="float32")  # the bundled demo model
    try:
        with live_server(create_app(engine, ServerSettings())) as url:
            yield url
    finally:
        engine.shutdown()


GA_VAD = {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": 24000},
    "transcription": {"model": "qwen", "language": "en"},
    "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500,
                       "prefix_padding_ms": 300}}}}  # fmt: skip


async def realtime_session(url: str, pcm: np.ndarray, expected: int) -> list:
    """One session through `client.realtime.connect`: streams `pcm` (as fast as it goes) and
    returns its events until `expected` transcriptions completed."""
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    events = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session=GA_VAD)
        for chunk in pieces(pcm):
            await conn.input_audio_buffer.append(audio=b64(chunk))
        async for event in conn:
            events.append(event)
            assert event.type != "error", event
            completed = [e for e in events if e.type.endswith("transcription.completed")]
            if len(completed) == expected:
                return events
    return events


def transcripts(events: list) -> tuple[str, ...]:
    """The transcripts in the order of their items (transcriptions finish in any order)."""
    done = {e.item_id: e.transcript for e in events if e.type.endswith("transcription.completed")}
    return tuple(done[e.item_id] for e in events if e.type == "input_audio_buffer.committed")


@pytest.mark.slow
def test_openai_client_transcribes_live_speech_with_the_demo_model(demo_server, talk):
    pcm, truth = talk
    events = asyncio.run(realtime_session(demo_server, pcm, len(truth)))
    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    assert kinds.count("input_audio_buffer.speech_started") == len(truth)
    assert kinds.count("input_audio_buffer.speech_stopped") == len(truth)
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    for e, (_, end) in zip(stopped, truth):
        assert end + 0.4 <= e.audio_end_ms / 1000 <= end + 0.7  # 500 ms of silence
    first, second = transcripts(events)
    assert "nine in the morning on Monday" in first and "blue folder to the office" in second
    completed = [e for e in events if e.type.endswith("transcription.completed")]
    for e in completed:
        deltas = [d.delta for d in events if d.type.endswith(".delta") and d.item_id == e.item_id]
        assert "".join(deltas) == e.transcript


@pytest.mark.slow
def test_eight_sessions_at_once_with_the_demo_model(demo_server, talk):
    pcm, truth = talk

    async def all_at_once():
        return await asyncio.gather(
            *(realtime_session(demo_server, pcm, len(truth)) for _ in range(8))
        )

    sessions = asyncio.run(all_at_once())
    texts = {transcripts(events) for events in sessions}
    assert len(texts) == 1  # greedy: every session heard the same
    (text,) = texts
    assert "Monday" in text[0] and "folder" in text[1]


@pytest.mark.slow
def test_same_text_as_the_file_endpoint_and_the_beta_client(demo_server):
    pcm = espeak_pcm16(SENTENCES[0])
    file_text = (
        OpenAI(base_url=demo_server + "/v1", api_key="unused", max_retries=0)
        .audio.transcriptions.create(
            model="m", file=("a.wav", wav24(pcm)), extra_body={"segmentation": "fixed"}
        )
        .text
    )

    async def beta() -> str:
        # the beta client always dials wss:// unless told where the websocket is
        ws_base = demo_server.replace("http://", "ws://") + "/v1"
        client = AsyncOpenAI(
            base_url=demo_server + "/v1", websocket_base_url=ws_base, api_key="unused"
        )
        async with client.beta.realtime.connect(model="qwen") as conn:
            await conn.transcription_session.update(session={"turn_detection": None})
            for chunk in pieces(pcm):
                await conn.input_audio_buffer.append(audio=b64(chunk))
            await conn.input_audio_buffer.commit()
            async for event in conn:
                assert event.type != "error", event
                if event.type.endswith("transcription.completed"):
                    return event.transcript
        return ""

    assert asyncio.run(beta()) == file_text
    assert "nine in the morning" in file_text
