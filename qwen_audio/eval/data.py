"""Reading a task's rows from local files, with messages that say what goes where.

Rows in the original scripts' format are one JSON object per line (`audio`, `prompt`, `gt`,
`source`, optional `id`); `audio` is absolute or relative to the JSONL's folder (else to the data
folder, else to the working folder). AIR-Bench tasks also read the benchmark's own meta files,
whose audio lies in `{task_name}_{dataset_name}/` folders beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .tasks import FOUNDATION_PROMPT, DataError, EvalRow, Task, default_prompt


def find_data_file(task: Task, data: str | os.PathLike) -> Path:
    """The task's data file: `data` itself if it is a file, else the first known name in it."""
    path = Path(data)
    if path.is_file():
        return path
    if path.is_dir():
        for name in task.data_files:
            if (path / name).is_file():
                return path / name
        if task.kind == "generic":
            jsonl = sorted(path.glob("*.jsonl"))
            if len(jsonl) == 1:
                return jsonl[0]
    raise DataError(f"no data for task {task.name} in {path}\n{task.data_help()}")


def load_rows(task: Task, data: str | os.PathLike, limit: int | None = None) -> list[EvalRow]:
    """Read, check and resolve the task's rows (the first `limit` of them)."""
    path = find_data_file(task, data)
    root = Path(data) if Path(data).is_dir() else path.parent
    records = _read_records(path)
    if limit is not None:
        records = records[:limit]
    if task.kind in ("chat", "foundation"):
        rows = [_airbench_row(task, r, i, path.parent) for i, r in enumerate(records)]
    else:
        rows = [_jsonl_row(task, r, i, path, root) for i, r in enumerate(records)]
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: id {dup!r} appears more than once; ids must be unique")
    missing = [r.audio for r in rows if not Path(r.audio).is_file()]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of {len(rows)} audio files are missing, e.g. {missing[0]}\n"
            + task.data_help()
        )
    return rows


def _read_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # a JSON list (AIR-Bench meta files)
        records = json.loads(text)
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not a JSON object ({e})") from None
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: every row must be a JSON object")
    return records


def _resolve_audio(audio: str, *bases: Path) -> str:
    p = Path(audio).expanduser()
    if p.is_absolute():
        return str(p)
    for base in (*bases, Path.cwd()):
        if (base / p).is_file():
            return str(base / p)
    return str(bases[0] / p)


def _jsonl_row(task: Task, r: dict, index: int, path: Path, root: Path) -> EvalRow:
    where = f"{path}, row {index + 1}"
    for key in ("audio", "gt"):
        if key not in r:
            raise DataError(f"{where}: no {key!r} field\n{task.data_help()}")
    source = str(r.get("source") or task.name)
    prompt = r.get("prompt")
    if prompt is None:
        prompt = default_prompt(task, source)
    extra = {k: v for k, v in r.items() if k not in ("audio", "prompt", "gt", "source", "id")}
    return EvalRow(
        id=str(r.get("id", index)),
        audio=_resolve_audio(str(r["audio"]), path.parent, root),
        prompt=str(prompt),
        gt=str(r["gt"]),
        source=source,
        extra=extra,
    )


def _airbench_row(task: Task, r: dict, index: int, root: Path) -> EvalRow:
    where = f"AIR-Bench row {index + 1}"
    if "audio" in r:  # already in our row format
        audio = _resolve_audio(str(r["audio"]), root)
    elif "path" in r and "task_name" in r and "dataset_name" in r:
        folder = root / f"{r['task_name']}_{r['dataset_name']}"
        name = str(r["path"])
        if r["task_name"] == "Audio_Grounding":  # the benchmark ships these as .flac
            name = name[:-3] + "flac"
        audio = str(folder / name)
    else:
        raise DataError(f"{where}: needs `path`, `task_name`, `dataset_name` (or `audio`)")
    question = r.get("question", r.get("prompt"))
    answer = r.get("answer_gt", r.get("gt"))
    if question is None or answer is None:
        raise DataError(f"{where}: needs `question` and `answer_gt`\n{task.data_help()}")
    if task.kind == "foundation":
        source = f"{r.get('task_name')}_{r.get('dataset_name')}"
        prompt = r.get("prompt") if "question" not in r else foundation_prompt(r)
    else:
        source = str(r.get("task_name", r.get("source", "chat")))
        prompt = question
    extra = {k: v for k, v in r.items() if k not in ("audio", "prompt", "gt", "source", "id")}
    extra.setdefault("question", question)
    return EvalRow(
        id=str(r.get("uniq_id", r.get("id", index))),
        audio=audio,
        prompt=str(prompt),
        gt=str(answer),
        source=source,
        extra=extra,
    )


def foundation_prompt(r: dict) -> str:
    """AIR-Bench's multiple-choice instruction; a missing option is written "None" as there."""
    choices = "\n".join(f"{letter}. {r.get('choice_' + letter.lower())}" for letter in "ABCD")
    return f"{FOUNDATION_PROMPT}\n{r['question']}\n{choices}"
