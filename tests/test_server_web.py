"""The web page in a real headless Chromium with a fake microphone playing espeak-ng speech.

Debian's /usr/bin/chromium driven by Playwright (never a downloaded browser). The microphone is
Chromium's fake capture device reading a WAV file; the page records it with MediaRecorder
(WebM/Opus), sends it, and streams the answer of the fake engine, which reports how many seconds
of audio it received, so the test can tell a real recording arrived. Screenshots are saved to
build/test-artifacts/ (or $QWEN_AUDIO_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qwen_audio.server.app import create_app
from qwen_audio.server.settings import ServerSettings
from tests.fixtures.server_fake_engine import FakeEngine, live_server

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("QWEN_AUDIO_ARTIFACTS", Path(__file__).parents[1] / "build" / "test-artifacts")
)


def requirements() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is missing (apt-get install espeak-ng)"
    return None


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    if reason := requirements():
        pytest.skip(reason)
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    text = "What is the weather like in Paris today? Please answer briefly."
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def launch(p, speech: Path, loop: bool = True):
    capture = str(speech) if loop else f"{speech}%noloop"
    browser = p.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--headless=new",
            "--no-sandbox",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={capture}",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
    return browser


# Counts how often an answer's text changed while it streamed.
COUNT_UPDATES = """
window.__updates = 0;
document.addEventListener('DOMContentLoaded', () => {
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      if (el && el.closest('.msg.assistant.streaming')) window.__updates += 1;
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
});
"""


def test_record_send_stream_regenerate_clear(speech):
    from playwright.sync_api import expect, sync_playwright

    engine = FakeEngine()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with live_server(create_app(engine, ServerSettings())) as url, sync_playwright() as p:
        browser = launch(p, speech)
        try:
            context = browser.new_context(permissions=["microphone"])
            page = context.new_page()
            page.add_init_script(COUNT_UPDATES)
            page.goto(url)
            expect(page.locator("#status")).to_have_attribute("data-state", "ok")
            expect(page.locator("#model")).to_have_text(engine.model_name)

            # record ~2.5 s from the fake microphone, then send the voice message alone
            page.click("#record")
            expect(page.locator("#record")).to_have_class(re.compile("recording"))
            page.wait_for_timeout(2500)
            page.click("#record")
            expect(page.locator("#pending")).to_be_visible()
            page.click("#send")

            answer = page.locator(".msg.assistant").last
            expect(answer).not_to_have_class(re.compile("streaming"), timeout=15000)
            text = answer.locator(".text").inner_text()
            m = re.match(r"heard 1 audio\(s\) of (\d+\.\d) s:", text)
            assert m, text
            assert 1.5 <= float(m.group(1)) <= 4.0  # the recording reached the engine decoded
            assert page.evaluate("window.__updates") >= 5  # rendered piece by piece
            expect(page.locator(".msg.user audio")).to_have_count(1)  # a player for the audio
            assert "audio" in answer.locator(".meta").inner_text()  # usage shown
            samples, rate = engine.calls[-1]["messages"][0]["content"][0]["audio"]
            assert rate == 16000 and len(samples) > 1.5 * 16000
            page.screenshot(path=str(ARTIFACTS / "server_web_voice_chat.png"), full_page=True)

            # a typed follow-up carries the history (the audio turn and the answer)
            page.fill("#text", "And tomorrow?")
            page.press("#text", "Enter")
            expect(page.locator(".msg.assistant")).to_have_count(2)
            expect(page.locator(".msg.assistant").last).to_contain_text(
                "heard 1 audio(s)", timeout=10000
            )
            roles = [m["role"] for m in engine.calls[-1]["messages"]]
            assert roles == ["user", "assistant", "user"]

            # regenerate: the last answer is replaced, the same conversation is asked again
            calls = len(engine.calls)
            page.click("#regenerate")
            expect(page.locator(".msg.assistant")).to_have_count(2)
            expect(page.locator(".msg.assistant").last).not_to_have_class(
                re.compile("streaming"), timeout=10000
            )
            assert len(engine.calls) == calls + 1
            assert [m["role"] for m in engine.calls[-1]["messages"]] == roles

            # stop: a long answer is cut, and the server cancels the engine request
            page.fill("#text", "[slow] tell me everything")
            page.click("#send")
            expect(page.locator("#stop")).to_be_visible()
            page.wait_for_timeout(500)
            page.click("#stop")
            expect(page.locator(".msg.assistant").last.locator(".meta")).to_have_text("stopped")
            page.wait_for_timeout(500)
            assert not engine.running and engine.closed

            # phone width: nothing overflows sideways
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(ARTIFACTS / "server_web_phone.png"))

            page.click("#clear")
            expect(page.locator(".msg")).to_have_count(0)
            expect(page.locator("#empty")).to_be_visible()
        finally:
            browser.close()


def test_hands_free_turn(speech):
    """Hands-free: the page listens, stops when the speech ends, and sends by itself."""
    from playwright.sync_api import expect, sync_playwright

    engine = FakeEngine()
    with live_server(create_app(engine, ServerSettings())) as url, sync_playwright() as p:
        browser = launch(p, speech, loop=False)
        try:
            context = browser.new_context(permissions=["microphone"])
            page = context.new_page()
            page.goto(url)
            expect(page.locator("#status")).to_have_attribute("data-state", "ok")
            page.check("#handsfree")
            answer = page.locator(".msg.assistant").first
            expect(answer).to_contain_text("heard 1 audio(s)", timeout=20000)
            expect(page.locator(".msg.user audio")).to_have_count(1)
            page.uncheck("#handsfree")
        finally:
            browser.close()


def test_live_captions(speech, tmp_path):
    """Live captions: the microphone streams to /v1/realtime, the server's turn detection cuts
    the speech at its pauses, and each utterance's transcription appears as a caption line."""
    import numpy as np
    import soundfile as sf
    from playwright.sync_api import expect, sync_playwright

    x, rate = sf.read(speech, dtype="float32")
    loud = np.flatnonzero(np.abs(x) > 0.01)
    spoken = (loud[-1] - loud[0]) / rate
    padded = tmp_path / "padded.wav"  # a second of silence before, two after
    sf.write(padded, np.concatenate([np.zeros(rate), x, np.zeros(2 * rate)]), rate)

    engine = FakeEngine()
    with live_server(create_app(engine, ServerSettings())) as url, sync_playwright() as p:
        browser = launch(p, padded, loop=False)
        try:
            context = browser.new_context(permissions=["microphone"])
            page = context.new_page()
            page.goto(url)
            expect(page.locator("#status")).to_have_attribute("data-state", "ok")
            page.click("#captions")
            expect(page.locator("#captions")).to_have_class(re.compile("recording"))
            expect(page.locator("#captions-panel")).to_be_visible()
            final = page.locator(".caption.final")
            expect(final.first).to_contain_text("heard 1 audio(s)", timeout=20000)
            page.wait_for_timeout(2500)  # the rest of the file, then silence
            page.click("#captions")
            expect(page.locator("#captions")).not_to_have_class(re.compile("recording"))
            page.wait_for_timeout(1500)
            texts = final.all_inner_texts()
            seconds = []
            for text in texts:
                m = re.fullmatch(
                    r"heard 1 audio\(s\) of (\d+\.\d) s: Transcribe the speech\.", text
                )
                assert m, texts
                seconds.append(float(m.group(1)))
            # the speech reached the engine whole, cut at pauses, without the silence around it
            assert spoken - 0.2 <= sum(seconds) <= spoken + 0.6 * len(seconds) + 0.4, (
                seconds,
                spoken,
            )
            assert page.locator(".msg.error").count() == 0
            assert all(c["messages"][0]["content"][0]["audio"][1] == 16000 for c in engine.calls)
            page.screenshot(path=str(ARTIFACTS / "server_web_live_captions.png"), full_page=True)
        finally:
            browser.close()
