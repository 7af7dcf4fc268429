"""Clean-up of the model's text: language tags at the start go (the language is remembered),
whitespace at both ends goes. Streaming, so the server's deltas add up exactly to the text the
command line prints for the same output."""

from __future__ import annotations

import re
import zlib

TAG_RE = re.compile(r"<\|([a-z]{2,3})\|>")
TAG_PREFIX_RE = re.compile(r"<(\|([a-z]{0,3}(\|)?)?)?")


class TextCleaner:
    """Streams one segment's text: drops leading language tags (remembering the language) and
    leading whitespace, and holds back trailing whitespace, so the deltas add up exactly to the
    segment's stripped text."""

    def __init__(self):
        self.head = ""  # text seen while it may still be a tag
        self.in_head = True
        self.held = ""  # trailing whitespace not sent yet
        self.sent = False
        self.language: str | None = None

    def feed(self, delta: str) -> str:
        if self.in_head:
            self.head += delta
            while True:
                s = self.head.lstrip()
                m = TAG_RE.match(s)
                if m:
                    self.language = self.language or m.group(1)
                    self.head = s[m.end() :]
                    continue
                if s == "" or TAG_PREFIX_RE.fullmatch(s):
                    return ""  # could still become a tag
                break
            self.in_head = False
            delta, self.head = s, ""
        return self._emit(delta)

    def flush(self) -> str:
        rest, self.head, self.in_head = self.head.lstrip(), "", False
        return self._emit(rest)

    def _emit(self, delta: str) -> str:
        text = self.held + delta
        body = text.rstrip()
        self.held = text[len(body) :]
        if not self.sent:
            body = body.lstrip()
        if body:
            self.sent = True
        return body


def clean_text(text: str) -> tuple[str, str | None]:
    """(clean text, language tag the model wrote or None) of a whole answer at once."""
    cleaner = TextCleaner()
    out = cleaner.feed(text) + cleaner.flush()
    return out, cleaner.language


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib(text)), Whisper's repetition check."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
