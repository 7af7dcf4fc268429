"""Training data: JSONL rows in three formats, checked before training, then batched and packed.

Row formats (one JSON object per line):
- chat, as the API takes it: `{"messages": [{"role": "user", "content": [{"type": "audio",
  "audio": "a.wav"}, {"type": "text", "text": "..."}]}, {"role": "assistant", "content": "..."}]}`
- ms-swift / LLaMA-Factory: `{"messages": [{"role": "user", "content": "<audio>What is said?"},
  ...], "audios": ["a.wav"]}`: each `<audio>` tag takes the next audio of the list
  (LLaMA-Factory's `conversations` with `from`/`value` and a top-level `system` work too);
- base model: `{"audio": "a.wav", "prompt": "Detect the language and recognize the speech:
  <|en|>", "gt": "..."}`; the prompt gets `<|audio_bos|><|AUDIO|><|audio_eos|>` in front unless
  it already holds the placeholder, as in the evaluation protocol.
Preference rows (DPO) add `chosen` and `rejected` answers (strings or assistant messages) to a
conversation that ends with the user, or to a base-model row without `gt`; ms-swift's
`rejected_response` next to a conversation that ends with the chosen answer works too.

Relative audio paths are read from the data file's folder (then from the current directory).
Every row is rendered by the inference `PromptRenderer` before training starts; the rows it
refuses are reported with file and line (see `load_data`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..audio import AudioError
from ..prompt import PromptError, PromptRenderer, RenderedPrompt
from ..tokenizer import AUDIO, AUDIO_BOS, AUDIO_EOS

AUDIO_TAG = "<audio>"  # ms-swift / LLaMA-Factory placeholder
BASE_PLACEHOLDER = f"{AUDIO_BOS}{AUDIO}{AUDIO_EOS}"
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_SHAREGPT_ROLES |= {"system": "system"}
_URL = re.compile(r"^(data:|[a-zA-Z][a-zA-Z0-9+.-]*://)")


class DataError(ValueError):
    """The training data cannot be used; the message lists every bad row with file and line."""


class RowError(ValueError):
    """One row is malformed (raised while parsing, reported with its line)."""


@dataclass(frozen=True)
class SeqSpec:
    """One sequence to render: a conversation, or a base-model prompt with its target."""

    messages: list[dict] | None = None
    prompt: str | None = None
    audios: list | None = None
    target: str | None = None
    last_turn_only: bool = False  # DPO: the loss covers only the final assistant answer


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line in the data file
    sequences: tuple[SeqSpec, ...]  # one for SFT; (chosen, rejected) for DPO


@dataclass(frozen=True)
class BadRow:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class RowInfo:
    """What batching needs to know about a good row, measured while validating it."""

    line: int
    num_tokens: int  # all sequences of the row together
    num_targets: int  # tokens with loss (SFT); DPO counts pairs instead (1 per row)


# ---- parsing -------------------------------------------------------------------------------


def read_jsonl(path: Path) -> tuple[list[tuple[int, Any]], list[BadRow]]:
    """(line, object) of every non-empty line, and the lines that are not JSON objects."""
    rows, bad = [], []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the data file {path}: {e}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(BadRow(path, number, f"invalid JSON: {e.msg} (column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            bad.append(BadRow(path, number, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        rows.append((number, obj))
    return rows, bad


def parse_row(obj: dict, line: int, base_dir: Path, *, dpo: bool) -> Row:
    """A JSON object -> the sequence(s) to render; RowError says what is wrong with it."""
    if "messages" in obj or "conversations" in obj:
        messages = _messages(obj, base_dir)
        if not dpo:
            return Row(line, (SeqSpec(messages=messages),))
        chosen, rejected, prompt = _preference_answers(obj, messages)
        return Row(
            line,
            tuple(
                SeqSpec(messages=prompt + [answer], last_turn_only=True)
                for answer in (chosen, rejected)
            ),
        )
    if "audio" in obj or "prompt" in obj:
        prompt = obj.get("prompt")
        if not isinstance(prompt, str):
            raise RowError("a base-model row needs a 'prompt' string")
        audios = obj.get("audio")
        audios = [] if audios is None else audios if isinstance(audios, list) else [audios]
        audios = [_resolve(a, base_dir) for a in audios]
        if AUDIO not in prompt:
            prompt = BASE_PLACEHOLDER * len(audios) + prompt
        keys = ("chosen", "rejected") if dpo else ("gt",)
        for key in keys:
            if not isinstance(obj.get(key), str):
                raise RowError(
                    f"a base-model {'preference ' if dpo else ''}row needs a {key!r} string"
                )
        return Row(line, tuple(SeqSpec(prompt=prompt, audios=audios, target=obj[k]) for k in keys))
    raise RowError(
        "unknown row format: expected 'messages' (chat or ms-swift), 'conversations' "
        "(LLaMA-Factory) or 'audio' + 'prompt' + 'gt' (base model)"
    )


def _messages(obj: dict, base_dir: Path) -> list[dict]:
    key = "messages" if "messages" in obj else "conversations"
    raw = obj[key]
    if not isinstance(raw, list) or not raw:
        raise RowError(f"{key!r} must be a non-empty list of messages")
    messages = []
    if isinstance(obj.get("system"), str):
        messages.append({"role": "system", "content": obj["system"]})
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RowError(f"{key}[{i}] is not an object")
        if "from" in m and "role" not in m:  # ShareGPT style
            role = _SHAREGPT_ROLES.get(m["from"])
            if role is None:
                raise RowError(f"{key}[{i}]: unknown speaker {m['from']!r}")
            m = {"role": role, "content": m.get("value")}
        messages.append(dict(m))
    audios = obj.get("audios")
    if audios is not None:
        if not isinstance(audios, list):
            audios = [audios]
        return _expand_tags(messages, [_resolve(a, base_dir) for a in audios])
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) and AUDIO_TAG in content:
            raise RowError(
                f"placeholder mismatch: {AUDIO_TAG} in the messages but no 'audios' list"
            )
        if isinstance(content, list):
            m["content"] = [_resolve_part(p, base_dir) for p in content]
    return messages


def _expand_tags(messages: list[dict], audios: list) -> list[dict]:
    """ms-swift style: each `<audio>` tag in string content becomes an audio part."""
    tags = sum(m["content"].count(AUDIO_TAG) for m in messages if isinstance(m.get("content"), str))
    if tags != len(audios):
        raise RowError(
            f"placeholder mismatch: {tags} {AUDIO_TAG} tag(s) in the messages but "
            f"{len(audios)} audio(s) in 'audios'"
        )
    pending = iter(audios)
    out = []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, str) or AUDIO_TAG not in content:
            out.append(m)
            continue
        parts: list[dict] = []
        pieces = content.split(AUDIO_TAG)
        for i, text in enumerate(pieces):
            if i > 0:
                parts.append({"type": "audio", "audio": next(pending)})
            if text:  # kept as written, as ms-swift does
                parts.append({"type": "text", "text": text})
        out.append({**m, "content": parts})
    return out


def _preference_answers(obj: dict, messages: list[dict]) -> tuple[dict, dict, list[dict]]:
    """(chosen, rejected, prompt messages) of a preference row."""
    if "rejected_response" in obj:  # ms-swift: the conversation ends with the chosen answer
        if messages[-1].get("role") != "assistant":
            raise RowError("'rejected_response' needs a conversation that ends with the answer")
        chosen, prompt = messages[-1], messages[:-1]
        rejected = {"role": "assistant", "content": obj["rejected_response"]}
    else:
        prompt = messages
        chosen, rejected = (_answer(obj, k) for k in ("chosen", "rejected"))
    if prompt[-1].get("role") != "user":
        raise RowError("a preference row's conversation must end with a user message")
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(answer.get("content"), str):
            raise RowError(f"the {name} answer must be text")
    return chosen, rejected, prompt


def _answer(obj: dict, key: str) -> dict:
    value = obj.get(key)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, dict) and value.get("role", "assistant") == "assistant":
        return {"role": "assistant", "content": value.get("content")}
    raise RowError(f"a preference row needs a {key!r} answer (a string or an assistant message)")


def _resolve(source: Any, base_dir: Path) -> Any:
    """A relative path is read from the data file's folder, else from the current folder."""
    if not isinstance(source, str) or not source or _URL.match(source):
        return source
    path = Path(source).expanduser()
    if path.is_absolute():
        return str(path)
    beside = base_dir / path
    return str(path) if not beside.exists() and path.exists() else str(beside)


def _resolve_part(part: Any, base_dir: Path) -> Any:
    if isinstance(part, dict):
        for key in ("audio", "audio_url"):
            if isinstance(part.get(key), str):
                return {**part, key: _resolve(part[key], base_dir)}
    return part


# ---- rendering and validation ---------------------------------------------------------------


def render(renderer: PromptRenderer, seq: SeqSpec) -> RenderedPrompt:
    """The same renderer as inference, with the loss mask; DPO keeps only the last answer."""
    if seq.messages is not None:
        out = renderer.render_chat(seq.messages, add_generation_prompt=False, with_loss_mask=True)
        if seq.last_turn_only:
            out.loss_mask = last_run(out.loss_mask)
        return out
    return renderer.render_raw(seq.prompt, seq.audios, target=seq.target)


def last_run(mask: list[bool]) -> list[bool]:
    """Only the last run of True values (the final answer and its end token)."""
    out = [False] * len(mask)
    i = len(mask) - 1
    while i >= 0 and not mask[i]:
        i -= 1
    while i >= 0 and mask[i]:
        out[i] = True
        i -= 1
    return out


def check_row(
    renderer: PromptRenderer, row: Row, max_length: int
) -> tuple[RowInfo, list[RenderedPrompt]]:
    """Render every sequence of the row (this reads and decodes its audio); raise RowError.
    Returns what batching needs to know and the rendered sequences."""
    num_tokens = num_targets = 0
    rendered = []
    for seq in row.sequences:
        try:
            out = render(renderer, seq)
        except (AudioError, PromptError) as e:
            raise RowError(str(e)) from None
        n = len(out.token_ids)
        if n > max_length:
            raise RowError(f"{n} tokens, over --max-length {max_length}")
        targets = sum(out.loss_mask[1:])  # the first token is never predicted
        if targets == 0:
            raise RowError("nothing to learn: no assistant answer (or target) in the row")
        num_tokens += n
        num_targets += targets
        rendered.append(out)
    return RowInfo(row.line, num_tokens, num_targets), rendered


def rendered_bytes(rendered: list[RenderedPrompt]) -> int:
    """The memory the audio features of a rendered row take (the rest is small)."""
    return sum(
        c.features.numel() * c.features.element_size() for p in rendered for c in p.audio_clips
    )


@dataclass
class TrainData:
    """The good rows of a data file, with what batching needs to know about each."""

    path: Path
    rows: list[Row]
    info: list[RowInfo]
    bad: list[BadRow]
    total_rows: int
    # rows rendered while they were checked, by index into `rows`, kept up to a memory budget so
    # that training does not decode and featurize them again (StepBatches takes them over)
    rendered: dict[int, list[RenderedPrompt]] = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        return [i.num_tokens for i in self.info]

    def __len__(self) -> int:
        return len(self.rows)


def load_data(
    path: Path,
    renderer: PromptRenderer,
    *,
    max_length: int,
    dpo: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    keep_rendered_bytes: int = 0,
) -> TrainData:
    """Parse and validate every row. With several processes each checks a share of the rows
    and the results are exchanged, so every process ends with the same rows. Each process keeps
    the rows it rendered while checking them, up to `keep_rendered_bytes` of audio features."""
    path = Path(path)
    objects, bad = read_jsonl(path)
    total_rows = len(objects) + len(bad)
    checked: dict[int, RowInfo | str] = {}
    iterator = range(rank, len(objects), world_size)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="checking data", unit="row")
    parsed: dict[int, Row] = {}
    kept: dict[int, list[RenderedPrompt]] = {}
    budget = keep_rendered_bytes
    for i in iterator:
        line, obj = objects[i]
        try:
            parsed[i] = parse_row(obj, line, path.parent, dpo=dpo)
            checked[i], rendered = check_row(renderer, parsed[i], max_length)
            size = rendered_bytes(rendered)
            if size <= budget:
                kept[i] = rendered
                budget -= size
        except RowError as e:
            checked[i] = str(e)
        except Exception as e:  # a row must never stop the check of the others
            checked[i] = f"cannot use the row ({type(e).__name__}: {e})"
    if world_size > 1:
        gathered: list[dict] = [{} for _ in range(world_size)]
        torch.distributed.all_gather_object(gathered, checked)
        checked = {k: v for part in gathered for k, v in part.items()}
    rows, info, rendered = [], [], {}
    for i, (line, obj) in enumerate(objects):
        result = checked[i]
        if isinstance(result, str):
            bad.append(BadRow(path, line, result))
            continue
        if i in kept:
            rendered[len(rows)] = kept[i]
        rows.append(parsed[i] if i in parsed else parse_row(obj, line, path.parent, dpo=dpo))
        info.append(result)
    bad.sort(key=lambda b: b.line)
    return TrainData(path, rows, info, bad, total_rows, rendered)


def bad_row_report(data: TrainData, limit: int | None = 50) -> str:
    """One `file:line: reason` line per bad row (the first `limit` of them)."""
    lines = [str(b) for b in data.bad[:limit]]
    if limit is not None and len(data.bad) > limit:
        lines.append(f"... and {len(data.bad) - limit} more")
    return "\n".join(lines)
