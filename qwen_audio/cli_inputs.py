"""What the user typed, checked before the model loads, with errors in the CLI's own words.

A model takes seconds (the demo model) to minutes (a 7B checkpoint) to load, so every mistake in
an audio path, an audio file or an option value is found first. The library's messages name
Python arguments (`long_audio='error'`, `max_tokens`) and where in a conversation a part sits
(`message 0, part 0:`); `cli_words` turns them into the options a user typed.
"""

from __future__ import annotations

import os
import re

from .audio_io import SAMPLE_RATE, AudioError, load_audio

MAX_AUDIO_S = 30  # what the encoder hears at once; longer audio follows --long-audio

# Python argument -> the option that sets it.
OPTIONS = {
    "long_audio": "--long-audio",
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "device": "--device",
    "dtype": "--dtype",
    "quantize": "--quantize",
}
_WHERE = re.compile(r"\bmessage \d+, part \d+: ")
# `name='value'` for any option, or a bare name that can only be the argument (`max_tokens`).
_NAMES = re.compile(
    r"\b(?:(" + "|".join(OPTIONS) + r")=(?:'([^']*)'|([\w.-]+)\b)"
    r"|(" + "|".join(n for n in OPTIONS if "_" in n or n == "temperature") + r")\b)"
)


def cli_words(message: str) -> str:
    """A library error message as a CLI user should read it."""
    message = _WHERE.sub("", message).replace(" (allow_download=True in Python)", "")
    message = message.replace("allow_remote=True", "--allow-remote-audio")
    message = message.replace("allow_download=True", "--allow-download")
    message = message.replace("'split' or 'truncate'", "split or truncate")

    def option(m: re.Match) -> str:
        if m[4]:
            return OPTIONS[m[4]]
        return f"{OPTIONS[m[1]]} {m[2] if m[2] is not None else m[3]}"

    return _NAMES.sub(option, message)


def is_remote(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def check_audio(source: str, *, long_audio: str | None = None, allow_remote: bool = False) -> str:
    """Decode `source` once to prove it is usable; returns it with `~` expanded.

    `long_audio`: the --long-audio choice; "error" refuses audio over 30 s here, not after the
    model has loaded. Remote URLs are fetched only when the request runs (once is enough).
    """
    if is_remote(source):
        if not allow_remote:
            raise AudioError(
                f"{source}: remote audio is off; pass --allow-remote-audio to fetch http(s) URLs"
            )
        return source
    path = os.path.expanduser(source)
    samples = load_audio(path)
    seconds = samples.size / SAMPLE_RATE
    if long_audio == "error" and seconds > MAX_AUDIO_S:
        raise AudioError(
            f"{source} is {seconds:.1f} s long and --long-audio error refuses audio over "
            f"{MAX_AUDIO_S} s; use --long-audio split (30 s windows) or truncate"
        )
    return path


def check_sampling(args) -> None:
    """Build the sampling options now, so a bad value is reported before the model loads."""
    from .sampling import SamplingParams

    SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
