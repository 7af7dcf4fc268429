"""`qwen-audio chat`: one answer, or an interactive voice/text chat that keeps its history.

Interactive commands: `/audio PATH` attaches a file to the next turn (repeatable), `/reset`
clears the history, `/quit` (or Ctrl-D) leaves. A turn with audio and no text is a voice-chat
turn: the instruction is in the audio. Earlier turns are served from the prefix cache, so the
model does not re-read old audio.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .audio import AudioError, load_audio
from .llm import LLM
from .outputs import RequestOutput
from .sampling import SamplingParams

HELP = (
    "commands: /audio PATH (attach; then Enter alone sends a voice turn), /reset, /quit; "
    "anything else is your message"
)


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


def interactive_chat(llm: LLM, args) -> int:
    params = sampling_from_args(args)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    pending: list[str] = []
    print(f"qwen-audio chat with {llm.model_name}. {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("audio+ > " if pending else "> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not line and not pending:
            continue  # an empty line sends the attached audio alone (a voice-chat turn)
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            pending = []
            print("(history cleared)", file=sys.stderr)
            continue
        if line.startswith("/audio"):
            for path in shlex.split(line)[1:]:
                try:
                    load_audio(path)  # check now, so a bad file is reported at once
                except AudioError as err:
                    print(f"error: {err}", file=sys.stderr)
                    continue
                pending.append(str(Path(path).expanduser()))
                print(f"(attached {path})", file=sys.stderr)
            if pending and line.strip() == "/audio":
                print("usage: /audio PATH [PATH...]", file=sys.stderr)
            continue
        if line.startswith("/") and not line.startswith("//"):
            print(HELP, file=sys.stderr)
            continue
        turn = user_turn(pending, line.removeprefix("/") or None)
        try:
            result = _print_stream(llm.stream_chat(history + [turn], params), quiet=False)
        except (AudioError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            continue
        history += [turn, {"role": "assistant", "content": result.text}]
        pending = []
