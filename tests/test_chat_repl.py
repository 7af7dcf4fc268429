"""The interactive chat keeps the conversation through every mistake (issue 17).

A fake model records each conversation it is asked to answer, so the tests see exactly what
would reach the engine. One test drives the REPL through a pseudo-terminal, where readline is
active (line editing, history, Tab completion); one runs the real command on a tiny checkpoint.
"""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from argparse import Namespace

import pytest
import soundfile as sf

from qwen_audio.chat import ChatSession, complete, interactive_chat
from tests.conftest import noise_clip

FAKE = textwrap.dedent(
    """
    from qwen_audio.outputs import Delta

    class FakeLLM:
        model_name = "fake"

        def __init__(self):
            self.calls = []

        def stream_chat(self, conversation, params):
            self.calls.append(conversation)
            last = conversation[-1]["content"]
            text = " | ".join(p.get("text") or "audio:" + str(p.get("audio")) for p in last)
            if text == "boom":
                raise ValueError("message 0, part 0: the model refused boom")
            print(f"GOT[{text}]", flush=True)
            yield Delta("r", f"answer {len(self.calls)}", [1], "stop", 1)
    """
)
namespace: dict = {}
exec(FAKE, namespace)
FakeLLM = namespace["FakeLLM"]


def chat_args(**kw) -> Namespace:
    base = dict(temperature=0, top_p=None, top_k=None, max_tokens=8, seed=None, system=None,
                long_audio="split", allow_remote_audio=False)  # fmt: skip
    return Namespace(**(base | kw))


def run_script(lines: list[str], monkeypatch, capsys) -> tuple[FakeLLM, int, str, str]:
    llm = FakeLLM()
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = interactive_chat(llm, chat_args())
    out = capsys.readouterr()
    return llm, code, out.out, out.err


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sf.write(tmp_path / "clip.wav", noise_clip(1.0), 16000)
    sf.write(tmp_path / "my clip.wav", noise_clip(1.0, seed=1), 16000)
    return tmp_path


def test_no_mistake_loses_the_conversation(home, monkeypatch, capsys):
    llm, code, out, err = run_script(
        [
            "hello",
            "/audio 'clip.wav",  # unbalanced quote
            "/audio",  # usage
            "/audio missing.wav",
            "/audio ~/clip.wav",  # ~ expanded before the check
            "",  # a voice turn with the attached clip
            "boom",  # the model fails on this turn
            "clip.wav",  # a path typed as a message: a hint, nothing sent
            "/nope",
            "/audio my clip.wav",  # a path with a space, no quotes
            "and this one?",
            "/quit",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0
    assert "No closing quotation" in err and "usage: /audio PATH" in err
    assert "audio file not found: missing.wav" in err
    assert "error: the model refused boom" in err  # in CLI words, without "message 0, part 0"
    assert "hint: clip.wav is a file; attach it with /audio clip.wav" in err
    assert "unknown command /nope" in err
    # What reached the model: 4 turns; the failed one left no trace in the history.
    assert [c[-1]["content"] for c in llm.calls] == [
        [{"type": "text", "text": "hello"}],
        [{"type": "audio", "audio": str(home / "clip.wav")}],
        [{"type": "text", "text": "boom"}],
        [{"type": "audio", "audio": "my clip.wav"},
         {"type": "text", "text": "and this one?"}],
    ]  # fmt: skip
    last = llm.calls[-1]
    assert [m["role"] for m in last] == ["user", "assistant"] * 2 + ["user"]
    assert last[1]["content"] == "answer 1" and last[3]["content"] == "answer 2"
    assert "GOT[clip.wav]" not in out


def test_reset_and_interrupt_keep_the_session_usable(home, capsys):
    llm = FakeLLM()
    session = ChatSession(llm, None)
    assert session.handle("one")
    assert session.handle("/reset") and session.history == []

    def interrupted(conversation, params):
        raise KeyboardInterrupt
        yield

    llm.stream_chat = interrupted
    assert session.handle("two")  # Ctrl-C during an answer: the session goes on
    assert session.history == [] and "interrupted" in capsys.readouterr().err
    assert not session.handle("/quit")


def test_tab_completes_commands_and_audio_paths(home):
    (home / "clips").mkdir()

    def all_of(text, buffer):
        found, state = [], 0
        while (match := complete(text, state, buffer)) is not None:
            found.append(match)
            state += 1
        return found

    assert all_of("/au", "/au") == ["/audio "]
    assert all_of("cl", "/audio cl") == ["clip.wav", "clips/"]
    assert all_of("~/my", "/audio ~/my") == ["~/my clip.wav"]
    assert all_of("cl", "tell me about cl") == []


class Terminal:
    """The parent's side of a pseudo-terminal: read up to a marker, keep what follows."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, b""

    def until(self, needle: bytes, timeout: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"{needle!r} not seen; got {self.buffer!r}")
            try:
                self.buffer += os.read(self.fd, 4096)
            except OSError:  # the child closed the terminal
                raise AssertionError(f"{needle!r} not seen; got {self.buffer!r}") from None
        end = self.buffer.index(needle) + len(needle)
        seen, self.buffer = self.buffer[:end], self.buffer[end:]
        return seen


def test_line_editing_history_and_completion_on_a_terminal(home):
    script = home / "repl.py"
    script.write_text(
        FAKE
        + textwrap.dedent(
            """
            import argparse, sys
            from qwen_audio.chat import interactive_chat
            args = argparse.Namespace(temperature=0, top_p=None, top_k=None, max_tokens=8,
                                      seed=None, system=None, long_audio="split",
                                      allow_remote_audio=False)
            sys.exit(interactive_chat(FakeLLM(), args))
            """
        )
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: the REPL on a terminal
        os.execve(sys.executable, [sys.executable, str(script)], dict(os.environ, TERM="xterm"))
    term = Terminal(fd)
    try:
        term.until(b"> ")
        os.write(fd, b"first message\r")
        term.until(b"GOT[first message]")
        term.until(b"> ")
        os.write(fd, b"\x1b[A\r")  # Up: the previous line again, not the escape sequence
        got = term.until(b"]")
        assert got.endswith(b"GOT[first message]"), got
        term.until(b"> ")
        os.write(fd, b"/audio cli\t\r")  # Tab completes the file name
        term.until(b"(attached clip.wav)")
        term.until(b"> ")
        os.write(fd, b"/quit\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    # History is kept for the next session.
    assert "first message" in (home / ".cache" / "qwen-audio" / "chat_history").read_text()


def test_the_real_command_survives_mistakes(checkpoints, home):
    script = "/audio 'clip.wav\n/audio\nhello\n/audio ~/clip.wav\n\n/quit\n"
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_audio.cli", "chat", "--model", str(checkpoints("mha"))]
        + ["--max-tokens", "3", "--temperature", "0"],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "No closing quotation" in proc.stderr and "usage: /audio" in proc.stderr
    assert "(attached ~/clip.wav)" in proc.stderr
    assert proc.stdout.count("\n") >= 2  # both turns were answered
