"""Bounds on a request's text, checked before anything is tokenized.

Tokenizing holds the GIL, so one multi-megabyte text part would stop every other client's stream
for seconds (issue 16: 4 MB stalled a stream 10 s). A prompt cannot fit the context anyway once
its characters pass the context length times a generous characters-per-token bound, so such a
request is refused up front, naming the field and the limit; so are too many messages and text
that is not valid Unicode (a lone surrogate such as "\\ud800" cannot be encoded, and used to
reach the tokenizer as a 500).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .protocol import APIError, ChatCompletionRequest

# Ordinary text averages 3-5 characters per token in Qwen's BPE; 16 leaves room for runs of
# spaces, digits or symbols without letting a request cost more than ~16 x the context to tokenize.
CHARS_PER_TOKEN_BOUND = 16


def max_text_chars(configured: int | None, max_model_len: int) -> int:
    return configured if configured is not None else CHARS_PER_TOKEN_BOUND * max_model_len


def chat_texts(req: ChatCompletionRequest) -> Iterator[tuple[str, str]]:
    """(param, text) of every text in a chat request, in order."""
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            yield f"messages[{i}].content", m.content
        elif isinstance(m.content, list):
            for j, p in enumerate(m.content):
                text = getattr(p, "text", None)
                if isinstance(text, str):
                    yield f"messages[{i}].content[{j}].text", text


def check_texts(texts: Iterable[tuple[str, str]], limit: int, option: str) -> None:
    """Raise a 400 naming the field: text past `limit` characters in all, or invalid Unicode."""
    total = 0
    for param, text in texts:
        total += len(text)
        if total > limit:
            raise APIError(
                400,
                f"the request's text is over {limit:,} characters ({option}; the model's context "
                f"holds at most that many at {CHARS_PER_TOKEN_BOUND} characters per token)",
                param=param,
                code="text_too_long",
            )
        if not is_valid_unicode(text):
            raise APIError(400, "text is not valid Unicode: it holds a lone surrogate", param=param)


def is_valid_unicode(text: str) -> bool:
    """False for text holding a lone surrogate ("\\ud800"), which has no UTF-8 encoding."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_chat(req: ChatCompletionRequest, *, max_chars: int, max_messages: int) -> None:
    if len(req.messages) > max_messages:
        raise too_many_messages(len(req.messages), max_messages)
    check_texts(chat_texts(req), max_chars, "--max-text-chars")


def too_many_messages(count: int | None, max_messages: int) -> APIError:
    sent = f"{count:,} messages; " if count is not None else ""
    return APIError(
        400,
        f"{sent}at most {max_messages:,} per request (--max-messages)",
        param="messages",
        code="too_many_messages",
    )
