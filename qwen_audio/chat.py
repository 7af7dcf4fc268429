"""`qwen-audio chat`: one answer, or an interactive voice/text chat that keeps its history.

Interactive commands: `/audio PATH` attaches a file to the next turn (repeatable), `/reset`
clears the history, `/quit` (or Ctrl-D) leaves. A turn with audio and no text is a voice-chat
turn: the instruction is in the audio. Earlier turns are served from the prefix cache, so the
model does not re-read old audio.

No mistake ends the session: a bad path, an unbalanced quote or a failed turn prints one
`error:` line and the conversation stays as it was. On a terminal the prompt has line editing,
history (kept across sessions) and Tab completion of commands and of `/audio` paths.
"""

from __future__ import annotations

import glob
import logging
import os
import shlex
import sys
from pathlib import Path

from .audio_io import AudioError
from .cli_inputs import check_audio, cli_words
from .llm import LLM
from .outputs import RequestOutput
from .sampling import SamplingParams

log = logging.getLogger(__name__)

HELP = (
    "commands: /audio PATH (attach; then Enter alone sends a voice turn), /reset, /quit; "
    "anything else is your message (start it with // to send a leading /)"
)
AUDIO_USAGE = "usage: /audio PATH [PATH...]  (quote a path with spaces: /audio 'my file.wav')"
COMMANDS = ("/audio ", "/reset", "/quit", "/exit", "/help")
HISTORY_FILE = Path.home() / ".cache" / "qwen-audio" / "chat_history"


def sampling_from_args(args) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )


def user_turn(audios: list, text: str | None) -> dict:
    content: list[dict] = [{"type": "audio", "audio": a} for a in audios]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def answer_once(llm: LLM, args) -> RequestOutput:
    params = sampling_from_args(args)
    if args.raw:
        prompt = args.prompt or ""
        return _print_stream(llm.stream_generate(prompt, params, audios=args.audio), args.json)
    conversation = [{"role": "system", "content": args.system}] if args.system else []
    conversation.append(user_turn(args.audio, args.prompt))
    return _print_stream(llm.stream_chat(conversation, params), args.json)


def _print_stream(deltas, quiet: bool) -> RequestOutput:
    text, ids, last = [], [], None
    for d in deltas:
        if not quiet:
            print(d.text, end="", flush=True)
        text.append(d.text)
        ids += d.token_ids
        last = d
    if not quiet:
        print()
    return RequestOutput(
        last.request_id, "".join(text), ids, last.finish_reason, last.prompt_tokens
    )


class ChatSession:
    """The interactive chat's state and what each typed line does to it."""

    def __init__(self, llm: LLM, params: SamplingParams, system: str | None = None, *,
                 long_audio: str | None = None, allow_remote: bool = False) -> None:  # fmt: skip
        self.llm = llm
        self.params = params
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict] = list(self.system)
        self.pending: list[str] = []  # audio attached to the next turn
        self.long_audio = long_audio
        self.allow_remote = allow_remote

    @property
    def prompt(self) -> str:
        return "audio+ > " if self.pending else "> "

    def handle(self, line: str) -> bool:
        """Act on one typed line; False when the session ends. Never raises for a mistake."""
        line = line.strip()
        try:
            return self._handle(line)
        except (ValueError, OSError) as err:  # AudioError, PromptError, a bad path, ...
            print(f"error: {cli_words(str(err))}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n(interrupted; the conversation is kept)", file=sys.stderr)
        except Exception as err:  # a bug must not throw the conversation away either
            log.exception("chat turn failed")
            print(f"error: {type(err).__name__}: {err} (the conversation is kept)", file=sys.stderr)
        return True

    def _handle(self, line: str) -> bool:
        if not line and not self.pending:
            return True  # an empty line sends the attached audio alone (a voice-chat turn)
        if line in ("/quit", "/exit"):
            return False
        if line == "/reset":
            self.history, self.pending = list(self.system), []
            print("(history cleared)", file=sys.stderr)
            return True
        if line == "/help":
            print(HELP, file=sys.stderr)
            return True
        if line == "/audio" or line.startswith("/audio "):
            self.attach(line.removeprefix("/audio").strip())
            return True
        if _existing_file(line):
            print(
                f"hint: {line} is a file; attach it with /audio {line} (it was not sent; "
                "write it inside a sentence to send the name as text)",
                file=sys.stderr,
            )
            return True
        if line.startswith("/") and not line.startswith("//"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
            return True
        self.send(line.removeprefix("/") or None)
        return True

    def attach(self, rest: str) -> None:
        if not rest:
            print(AUDIO_USAGE, file=sys.stderr)
            return
        if _existing_file(rest):  # one path with spaces, typed without quotes
            paths = [rest]
        else:
            try:
                paths = shlex.split(rest)
            except ValueError as err:  # "No closing quotation"
                raise ValueError(f"/audio {rest}: {err}; {AUDIO_USAGE}") from None
        for path in paths:
            try:
                checked = check_audio(
                    path, long_audio=self.long_audio, allow_remote=self.allow_remote
                )
            except AudioError as err:
                print(f"error: {cli_words(str(err))}", file=sys.stderr)
                continue
            self.pending.append(checked)
            print(f"(attached {path})", file=sys.stderr)

    def send(self, text: str | None) -> None:
        turn = user_turn(self.pending, text)
        result = _print_stream(self.llm.stream_chat(self.history + [turn], self.params), False)
        # Only a finished answer joins the history; an error or Ctrl-C leaves it as it was.
        self.history += [turn, {"role": "assistant", "content": result.text}]
        self.pending = []


def _existing_file(text: str) -> bool:
    try:
        return bool(text) and Path(os.path.expanduser(text)).is_file()
    except (OSError, ValueError):  # a name too long, a null byte
        return False


def complete(text: str, state: int, buffer: str) -> str | None:
    """Tab completion: the commands, and file paths after `/audio `."""
    if buffer.startswith("/audio "):
        expanded = os.path.expanduser(text)
        matches = sorted(glob.glob(glob.escape(expanded) + "*"))
        if text.startswith("~"):  # show what was typed, not the expanded home
            home = os.path.expanduser("~")
            matches = ["~" + m[len(home) :] for m in matches]
        matches = [m + "/" if os.path.isdir(os.path.expanduser(m)) else m for m in matches]
    elif buffer == text and text.startswith("/"):
        matches = [c for c in COMMANDS if c.startswith(text)]
    else:
        matches = []
    return matches[state] if state < len(matches) else None


def _setup_readline() -> None:
    """Line editing, history and completion, when the chat runs on a terminal."""
    if not sys.stdin.isatty():
        return
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        return
    readline.set_completer_delims(" \t\n'\"")  # paths keep their / . ~ - characters
    readline.set_completer(lambda text, state: complete(text, state, readline.get_line_buffer()))
    readline.parse_and_bind("tab: complete")
    try:
        readline.read_history_file(HISTORY_FILE)
    except OSError:
        pass
    readline.set_history_length(1000)

    import atexit

    def save() -> None:
        try:
            HISTORY_FILE.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(HISTORY_FILE)
        except OSError:
            pass

    atexit.register(save)


def interactive_chat(llm: LLM, args) -> int:
    session = ChatSession(
        llm,
        sampling_from_args(args),
        args.system,
        long_audio=getattr(args, "long_audio", None),
        allow_remote=getattr(args, "allow_remote_audio", False),
    )
    _setup_readline()
    print(f"qwen-audio chat with {llm.model_name}. {HELP}", file=sys.stderr)
    while True:
        try:
            line = input(session.prompt)
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
            print(file=sys.stderr)
            continue
        if not session.handle(line):
            return 0
