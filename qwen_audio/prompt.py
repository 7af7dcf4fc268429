"""Conversations and raw prompts -> token ids, audio clips and (for training) the loss mask.

The only place in the package that turns text into ids. The chat template is rendered with
jinja2 in a sandbox, tokenised with special tokens recognised, and every `<|AUDIO|>` placeholder
is expanded into as many audio-token ids as the audio gives embeddings: the same ids as
`Qwen2AudioProcessor(text=rendered, audio=..., sampling_rate=16000)` for clips up to 30 s. A longer
audio (when `long_audio="split"`) gives several 30 s windows whose tokens follow one another
inside the same `<|audio_bos|> ... <|audio_eos|>` pair.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .audio import AudioClip, AudioError, audio_content_hash, load_audio, prepare_audio
from .audio_io import SAMPLE_RATE
from .tokenizer import AUDIO, IM_END, Tokenizer

# The Qwen2-Audio Instruct chat template, written from its rules: a default system turn when the
# first message is not a system one; ChatML turns; each audio part becomes a numbered line
# "Audio n: <|audio_bos|><|AUDIO|><|audio_eos|>" (n counts over the whole conversation); text
# parts are written as they are.
DEFAULT_CHAT_TEMPLATE = r"""
{%- set state = namespace(audios=0) -%}
{%- for message in messages -%}
    {%- if loop.first and message['role'] != 'system' -%}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
    {%- endif -%}
    {{- '<|im_start|>' ~ message['role'] ~ '\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- else -%}
        {%- for part in message['content'] -%}
            {%- if 'audio' in part or 'audio_url' in part or part['type'] == 'audio' -%}
                {%- set state.audios = state.audios + 1 -%}
                {{- 'Audio ' ~ state.audios ~ ': <|audio_bos|><|AUDIO|><|audio_eos|>\n' -}}
            {%- elif 'text' in part -%}
                {{- part['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()


class PromptError(ValueError):
    """A conversation, prompt or chat template that cannot be rendered; the message says where."""


@dataclass
class RenderedPrompt:
    token_ids: list[int]  # the prompt, every <|AUDIO|> already expanded
    audio_clips: list[AudioClip]  # in placeholder order; a long audio gives several clips
    audio_hashes: list[bytes]  # one per clip: identifies the clip's features (encoder cache key)
    loss_mask: list[bool] | None  # per token: True where the model must learn to produce it
    num_audio_tokens: int  # how many of token_ids are audio tokens


def load_chat_template(path: str | Path) -> str | None:
    """The folder's chat template: `chat_template.jinja`, `chat_template.json`, then
    `tokenizer_config.json`'s `chat_template`; None when there is none."""
    path = Path(path)
    jinja_path = path / "chat_template.jinja"
    if jinja_path.exists():
        try:
            return jinja_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PromptError(f"cannot read {jinja_path}: {e}") from e
    for name in ("chat_template.json", "tokenizer_config.json"):
        file = path / name
        if not file.exists():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PromptError(f"cannot read {file}: {e}") from e
        template = data.get("chat_template") if isinstance(data, dict) else None
        if template is None:
            if name == "chat_template.json":
                raise PromptError(f"{file} has no 'chat_template' key")
            continue
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if not isinstance(template, str):
            raise PromptError(f"{file}: 'chat_template' is not a template string")
        return template
    return None


class _GenerationTag(Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (used by some templates to mark
    assistant text for transformers' masks) and renders the body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str):
    raise PromptError(f"the chat template refused the conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _compile_template(source: str) -> jinja2.Template:
    # The same environment settings chat templates are written for (trim/lstrip blocks,
    # loop controls, tojson, raise_exception, strftime_now); sandboxed because hub templates are
    # untrusted code.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _GenerationTag],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise PromptError(f"the chat template does not compile: {e}") from e


class PromptRenderer:
    """Renders chat conversations (Instruct) and raw prompts (base) for one model."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None,
        n_mels: int,
        *,
        long_audio: str = "split",
        allow_remote_audio: bool = False,
    ):
        self.tokenizer = tokenizer
        self.chat_template = chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE
        self.n_mels = n_mels
        self.long_audio = long_audio
        self.allow_remote_audio = allow_remote_audio
        self._template = _compile_template(self.chat_template)

    # ---- public API -------------------------------------------------------------------------

    def render_chat(
        self,
        messages: list[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        with_loss_mask: bool = False,
    ) -> RenderedPrompt:
        """`messages`: [{"role": ..., "content": str | [parts]}]; see `_normalize_part`."""
        chat, sources = _normalize_messages(messages)
        text = self._render_text(chat, add_generation_prompt)
        if with_loss_mask:
            ids, mask = self._ids_with_mask(chat, text, add_generation_prompt)
        else:
            ids, mask = self.tokenizer.encode(text), None
        return self._expand(ids, mask, sources)

    def render_raw(
        self, prompt: str, audios: list | None = None, target: str | None = None
    ) -> RenderedPrompt:
        """A base-model prompt with one `<|audio_bos|><|AUDIO|><|audio_eos|>` per audio.

        With `target` (training), the ids are prompt + target + eos, and the loss mask is True on
        the target and eos. The two are tokenised separately, as at inference, where the model
        continues from the prompt's ids.
        """
        if not isinstance(prompt, str):
            raise PromptError(f"the prompt must be a string, got {type(prompt).__name__}")
        if audios is None:
            audios = []
        if not isinstance(audios, list):
            raise PromptError(f"audios must be a list of audio inputs, got {type(audios).__name__}")
        sources = [(f"audio {i}", _audio_source(f"audio {i}", a)) for i, a in enumerate(audios)]
        ids = self.tokenizer.encode(prompt)
        mask = None
        if target is not None:
            target_ids = self.tokenizer.encode(target) + [self.tokenizer.eos_token_id]
            if self.tokenizer.audio_token_id in target_ids:
                raise PromptError(f"the target contains the audio placeholder {AUDIO}")
            mask = [False] * len(ids) + [True] * len(target_ids)
            ids = ids + target_ids
        return self._expand(ids, mask, sources)

    # ---- rendering ---------------------------------------------------------------------------

    def _render_text(self, chat: list[dict], add_generation_prompt: bool) -> str:
        tok = self.tokenizer
        try:
            return self._template.render(
                messages=chat,
                add_generation_prompt=add_generation_prompt,
                eos_token=tok.id_to_token(tok.eos_token_id),
                pad_token=tok.id_to_token(tok.pad_token_id),
                bos_token=None,
            )
        except PromptError:
            raise
        except jinja2.TemplateError as e:
            raise PromptError(f"the chat template failed to render: {e}") from e

    def _ids_with_mask(
        self, chat: list[dict], text: str, add_generation_prompt: bool
    ) -> tuple[list[int], list[bool]]:
        """Tokenises the rendered text in pieces split at the assistant spans (each assistant
        content plus its closing <|im_end|>), so the mask is exact; the pieces must give the
        same ids as the whole text, which holds when no token would cross a span edge."""
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            before = self._render_text(chat[:i], add_generation_prompt=True)
            through = self._render_text(chat[: i + 1], add_generation_prompt=False)
            if not (text.startswith(before) and text.startswith(through)):
                raise PromptError(
                    f"message {i}: the chat template does not render the conversation "
                    "incrementally (a prefix renders differently), so the loss mask is undefined"
                )
            end = through.rfind(IM_END, len(before))
            if end < 0:
                raise PromptError(f"message {i}: the chat template does not close it with {IM_END}")
            spans.append((len(before), end + len(IM_END)))

        ids: list[int] = []
        mask: list[bool] = []
        pos = 0
        for start, end in spans + [(len(text), len(text))]:
            for piece, learn in ((text[pos:start], False), (text[start:end], True)):
                piece_ids = self.tokenizer.encode(piece) if piece else []
                ids += piece_ids
                mask += [learn] * len(piece_ids)
            pos = end
        if ids != self.tokenizer.encode(text):
            raise PromptError(
                "an assistant message tokenises differently on its own than inside the "
                "conversation (for example it starts with a newline), so an exact loss mask "
                "cannot be made; strip leading whitespace from assistant messages"
            )
        return ids, mask

    # ---- audio -------------------------------------------------------------------------------

    def _expand(
        self, ids: list[int], mask: list[bool] | None, sources: list[tuple[str, Any]]
    ) -> RenderedPrompt:
        audio_id = self.tokenizer.audio_token_id
        placeholders = ids.count(audio_id)
        if placeholders != len(sources):
            raise PromptError(
                f"the prompt has {placeholders} {AUDIO} placeholder(s) but {len(sources)} "
                "audio(s) were given; each audio needs exactly one placeholder"
            )
        per_audio = [self._prepare(where, source) for where, source in sources]

        out_ids: list[int] = []
        out_mask: list[bool] | None = [] if mask is not None else None
        clips: list[AudioClip] = []
        hashes: list[bytes] = []
        audio_index = 0
        for i, token_id in enumerate(ids):
            if token_id != audio_id:
                out_ids.append(token_id)
                if out_mask is not None:
                    out_mask.append(mask[i])
                continue
            audio_clips, audio_hashes = per_audio[audio_index]
            audio_index += 1
            n = sum(clip.num_tokens for clip in audio_clips)
            out_ids += [audio_id] * n
            if out_mask is not None:
                out_mask += [False] * n
            clips += audio_clips
            hashes += audio_hashes
        return RenderedPrompt(
            token_ids=out_ids,
            audio_clips=clips,
            audio_hashes=hashes,
            loss_mask=out_mask,
            num_audio_tokens=sum(clip.num_tokens for clip in clips),
        )

    def _prepare(self, where: str, source: Any) -> tuple[list[AudioClip], list[bytes]]:
        array, rate = source if isinstance(source, tuple) else (source, None)
        try:
            samples = load_audio(array, rate, allow_remote=self.allow_remote_audio)
            clips = prepare_audio(samples, self.n_mels, long_audio=self.long_audio)
        except AudioError as e:
            raise AudioError(f"{where}: {e}") from e
        # Each window is featurised on its own, so its samples identify its features: the same
        # window gets the same key wherever it appears (a cache hit across prompts).
        hashes = []
        for clip in clips:
            start, end = round(clip.start_s * SAMPLE_RATE), round(clip.end_s * SAMPLE_RATE)
            hashes.append(audio_content_hash(samples[start:end]))
        return clips, hashes


# ---- message normalisation --------------------------------------------------------------------


def _normalize_messages(messages: Any) -> tuple[list[dict], list[tuple[str, Any]]]:
    """Copies the messages into the plain form the template sees (string content, or text and
    audio parts) and collects the audio sources in order."""
    if not isinstance(messages, (list, tuple)):
        raise PromptError(f"messages must be a list of dicts, got {type(messages).__name__}")
    chat: list[dict] = []
    sources: list[tuple[str, Any]] = []
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise PromptError(f"message {m} is a {type(message).__name__}, not a dict")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise PromptError(f"message {m} has no 'role' string")
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            chat.append({**message, "content": content})
            continue
        if not isinstance(content, (list, tuple)):
            raise PromptError(
                f"message {m}: 'content' must be a string or a list of parts, "
                f"got {type(content).__name__}"
            )
        parts = []
        for p, part in enumerate(content):
            where = f"message {m}, part {p}"
            text, source = _normalize_part(where, part)
            if text is not None:
                parts.append({"type": "text", "text": text})
            else:
                sources.append((where, source))
                label = source if isinstance(source, str) else f"<audio {len(sources)}>"
                parts.append({"type": "audio", "audio": label})
        chat.append({**message, "content": parts})
    return chat, sources


def _normalize_part(where: str, part: Any) -> tuple[str | None, Any]:
    """(text, None) for a text part, (None, audio source) for an audio part.

    Accepted parts: {"type": "text", "text": str}; {"type": "audio", "audio": source} and
    {"type": "audio", "audio_url": path_or_url}; OpenAI's {"type": "input_audio",
    "input_audio": {"data": bytes | base64 str | array, "format": ...}} and {"type": "audio_url",
    "audio_url": {"url": ...}}. A part without "type" is recognised by its key.
    """
    if not isinstance(part, Mapping):
        raise PromptError(f"{where}: a content part must be a dict, got {type(part).__name__}")
    kind = part.get("type")
    if kind is None:
        kind = next((k for k in ("text", "audio", "audio_url", "input_audio") if k in part), None)
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise PromptError(f"{where}: a text part needs a 'text' string")
        return text, None
    if kind == "audio":
        if "audio" in part:
            return None, _audio_source(where, part["audio"])
        if "audio_url" in part:
            return None, _url_source(where, part["audio_url"])
        raise PromptError(f"{where}: an audio part needs an 'audio' or 'audio_url' value")
    if kind == "audio_url":
        return None, _url_source(where, part.get("audio_url"))
    if kind == "input_audio":
        payload = part.get("input_audio")
        if not isinstance(payload, Mapping) or "data" not in payload:
            raise PromptError(
                f"{where}: an input_audio part needs {{'input_audio': {{'data': ...}}}}"
            )
        data = payload["data"]
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as e:
                raise PromptError(f"{where}: input_audio.data is not valid base64: {e}") from e
        return None, _audio_source(where, data)
    raise PromptError(f"{where}: unknown content part type {kind!r} (expected text or audio)")


def _url_source(where: str, value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise PromptError(f"{where}: audio_url must be a string or {{'url': string}}")
    return str(value) if isinstance(value, str) else value


def _audio_source(where: str, value: Any) -> Any:
    """An audio value as load_audio takes it: (array, rate) for arrays, else the value itself."""
    if isinstance(value, Mapping) and "array" in value:  # a datasets-style decoded audio
        value = (value["array"], value.get("sampling_rate"))
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or not isinstance(value[1], (int, np.integer)):
            raise PromptError(f"{where}: an audio tuple must be (array, sampling_rate)")
        return (value[0], int(value[1]))
    if isinstance(value, np.ndarray) or hasattr(value, "__dlpack__"):
        return (value, SAMPLE_RATE)  # a bare array is taken to be 16 kHz, as the reference does
    if value is None or (isinstance(value, (str, bytes)) and not value):
        raise PromptError(f"{where}: the audio value is empty")
    return value
