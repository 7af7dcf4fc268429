"""Benchmark tasks: their prompts, metrics, data file names and published numbers.

Prompts (*unverified* ones come from third-party code, see QWEN2_AUDIO.md) are part of the task;
a row's own `prompt` wins over the default, `--prompt` wins over both, and the "instruct"
variant swaps ASR/S2TT prompts for Instruct-style requests in the chat template. The ASR
prompts are `qwen_audio.asr`'s, the ones `qwen-audio transcribe` and the server send: the base
prompt is the published one, and the instruct variant is the transcription front-ends' chat
request for the task's language. The scoring clean-up stays the published one (normalize.py),
not the front-ends' tag cleaner: it is part of the protocol. Reading the rows is in data.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

from ..asr.prompts import AUDIO_PLACEHOLDER, LANGUAGES, base_prompt, chat_instruction

SYSTEM_PROMPT = "You are a helpful assistant."

# The transcription front-ends' one language table; the published evaluation prompts call
# zh "Mandarin" (FLEURS, CoVoST 2), so eval keeps that name for its prompts and reports.
LANGUAGE_NAMES = {**LANGUAGES, "zh": "Mandarin"}

# CoVoST 2: 21 languages into English, English into 15 languages.
COVOST2_PAIRS = tuple(
    [(x, "en") for x in "fr de es ca it ru zh pt fa et mn nl tr ar sv lv sl ta ja id cy".split()]
    + [("en", x) for x in "de ca zh fa et mn tr ar sv lv sl ta ja id cy".split()]
)

# "Detect the language and recognize the speech: <|{lang}|>" (unverified), the front-ends' base
# prompt without the audio placeholder (the predictors add it).
ASR_PROMPT = base_prompt("transcribe", "{lang}").removeprefix(AUDIO_PLACEHOLDER)
S2TT_PROMPT = "Detect the language and translate the speech into {target_language}: <|{lang}|>"
SER_PROMPT = "Recognize the emotion with keywords in English:"  # unverified
VSC_PROMPT = "Classify the human vocal sound to VocalSound in English:"
FOUNDATION_PROMPT = (
    "Choose the most suitable answer from options A, B, C, and D to respond the question in "
    "next line, you may only choose A or B or C or D."
)
# Our own phrasing for Instruct checkpoints, which follow instructions rather than task tags
# (ASR: `chat_instruction`, per task language; S2TT into any language, which the front-ends'
# translation into English does not cover).
INSTRUCT_S2TT_PROMPT = (
    "Translate the speech in this audio into {target_language}. Reply with the translation only."
)

# AIR-Bench chat task names -> the categories the benchmark reports.
AIRBENCH_CATEGORIES = {
    "speech_QA": "speech",
    "speech_dialogue_QA": "speech",
    "sound_QA": "sound",
    "sound_generation_QA": "sound",
    "music_QA": "music",
    "music_generation_analysis_QA": "music",
    "speech_and_sound_QA": "speech_and_sound",
    "speech_and_music_QA": "speech_and_music",
}

METRIC_LABELS = {
    "wer": "WER",
    "cer": "CER",
    "bleu": "BLEU",
    "acc": "ACC",
    "choice_acc": "ACC",
    "judge": "GPT score",
}
LOWER_IS_BETTER = {"wer", "cer"}


class DataError(ValueError):
    """Missing or malformed benchmark data; the message says what to put where."""


@dataclass(frozen=True)
class Published:
    """A number from the Qwen2-Audio report, to show beside ours."""

    label: str  # as published: "dev-clean", "en-de", "speech"
    value: float  # in the metric's own unit: WER/accuracy as fractions, BLEU 0..100, score 1..10
    match: tuple[str, ...] = ()  # consecutive tokens of a source name ("_"/"-" split); () = any


@dataclass(frozen=True)
class EvalRow:
    """One benchmark item, ready to prompt."""

    id: str
    audio: str  # path of the audio file
    prompt: str  # text after the audio (raw mode) or the user's text (chat mode), as in the data
    gt: str
    source: str
    extra: dict = field(default_factory=dict)  # other fields, copied into the prediction row


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "asr" | "s2tt" | "ser" | "vsc" | "chat" | "foundation" | "generic"
    metric: str  # "wer" | "cer" | "bleu" | "acc" | "choice_acc" | "judge"
    description: str
    data_files: tuple[str, ...]  # where the data file is looked for, relative to --data
    language: str | None = None  # ASR scoring language (en, zh, yue, fr, ...)
    prompt: str | None = None  # default prompt; may use {lang} {language} {target_language}
    instruct_prompt: str | None = None  # the "instruct" variant (ASR and S2TT)
    chat: bool = False  # prompt with the Instruct chat template instead of a raw prompt
    published: tuple[Published, ...] = ()
    row_example: dict = field(default_factory=dict)

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS[self.metric]

    def published_for(self, source: str) -> Published | None:
        tokens = [t for t in re.split(r"[_\-\s]+", source.lower()) if t]
        for pub in self.published:
            n = len(pub.match)
            if n == 0 or any(tuple(tokens[i : i + n]) == pub.match for i in range(len(tokens))):
                return pub
        return None

    def data_help(self) -> str:
        where = " or ".join(f"DIR/{f}" for f in self.data_files)
        lines = [f"{self.name}: {self.description}", f"  data file: {where} (or pass the file)"]
        if self.row_example:
            lines.append("  one row: " + json.dumps(self.row_example, ensure_ascii=False))
        if self.kind in ("chat", "foundation"):
            lines.append(
                "  audio: DIR/{task_name}_{dataset_name}/{path} as AIR-Bench ships it, or an "
                "`audio` field as above"
            )
        else:
            lines.append("  audio paths are relative to the data file's folder (or absolute)")
        return "\n".join(lines)


def _pub(label: str, value: float, *match: str) -> Published:
    return Published(label, value, tuple(match))


def _asr_task(name, language, files, published, description, source) -> Task:
    return Task(
        name=name,
        kind="asr",
        metric="cer" if language in ("zh", "yue") else "wer",
        description=description,
        data_files=files,
        language=language,
        prompt=ASR_PROMPT,
        instruct_prompt=chat_instruction("transcribe", language),
        published=published,
        row_example={
            "audio": "clips/0001.flac",
            "prompt": ASR_PROMPT.format(lang=language),
            "gt": "the reference transcript",
            "source": source,
        },
    )


def _build_registry() -> dict[str, Task]:
    tasks = [
        _asr_task(
            "librispeech", "en", ("librispeech_eval.jsonl", "asr/librispeech_eval.jsonl"),
            (_pub("dev-clean", 0.017, "dev", "clean"), _pub("dev-other", 0.036, "dev", "other"),
             _pub("test-clean", 0.017, "test", "clean"), _pub("test-other", 0.040, "test", "other")),
            "LibriSpeech dev/test clean/other, WER", "librispeech_test_clean",
        ),
        _asr_task(
            "aishell2", "zh", ("aishell2_eval.jsonl", "asr/aishell2_eval.jsonl"),
            (_pub("Mic", 0.032, "mic"), _pub("iOS", 0.031, "ios"),
             _pub("Android", 0.029, "android")),
            "AISHELL-2 test (Mic/iOS/Android), CER", "aishell2_test_ios",
        ),
        *[
            _asr_task(
                f"cv15_{lang}", lang,
                (f"cv15_asr_{lang}_eval.jsonl", f"asr/cv15_asr_{lang}_eval.jsonl"),
                (_pub(f"CommonVoice15 {lang}", value),),
                f"Common Voice 15 {LANGUAGE_NAMES[lang]}, {'CER' if lang in ('zh', 'yue') else 'WER'}",
                f"cv15_asr_{lang}",
            )
            for lang, value in (("en", 0.087), ("zh", 0.065), ("yue", 0.059), ("fr", 0.096))
        ],
        _asr_task(
            "fleurs_zh", "zh", ("fleurs_asr_zh_eval.jsonl", "asr/fleurs_asr_zh_eval.jsonl"),
            (_pub("Fleurs zh", 0.070),), "FLEURS Mandarin, CER", "fleurs_asr_zh",
        ),
        Task(
            name="covost2", kind="s2tt", metric="bleu",
            description="CoVoST 2 speech translation, all pairs, BLEU per pair",
            data_files=("covost2_eval.jsonl", "st/covost2_eval.jsonl"),
            prompt=S2TT_PROMPT, instruct_prompt=INSTRUCT_S2TT_PROMPT,
            published=tuple(
                _pub(f"{s}-{t}", v, s, t)
                for (s, t), v in {
                    ("en", "de"): 29.6, ("de", "en"): 33.6, ("en", "zh"): 45.6,
                    ("zh", "en"): 24.0, ("es", "en"): 38.7, ("fr", "en"): 37.2,
                    ("it", "en"): 35.2,
                }.items()
            ),
            row_example={
                "audio": "clips/0001.mp3",
                "prompt": S2TT_PROMPT.format(target_language="German", lang="en"),
                "gt": "the reference translation",
                "source": "covost2_en_de_test",
            },
        ),
        Task(
            name="meld", kind="ser", metric="acc",
            description="MELD speech emotion recognition, accuracy",
            data_files=("meld_eval.jsonl", "ser/meld_eval.jsonl"), prompt=SER_PROMPT,
            published=(_pub("MELD", 0.535),),
            row_example={"audio": "clips/0001.wav", "prompt": SER_PROMPT, "gt": "neutral",
                         "source": "meld"},
        ),
        Task(
            name="vocalsound", kind="vsc", metric="acc",
            description="VocalSound vocal sound classification, accuracy",
            data_files=("vocalsound_eval.jsonl", "vsc/vocalsound_eval.jsonl"), prompt=VSC_PROMPT,
            published=(_pub("VocalSound", 0.9395),),
            row_example={"audio": "clips/0001.wav", "prompt": VSC_PROMPT, "gt": "Laughter",
                         "source": "vocalsound"},
        ),
        Task(
            name="airbench_chat", kind="chat", metric="judge", chat=True,
            description="AIR-Bench chat (Instruct model), GPT-4-class judge score per category",
            data_files=("Chat_meta.json", "Chat/Chat_meta.json", "airbench_chat.jsonl"),
            published=(_pub("speech", 7.24, "speech"), _pub("sound", 6.83, "sound"),
                       _pub("music", 6.73, "music"), _pub("mixed", 6.42, "mixed")),
            row_example={"path": "x.wav", "question": "What is the speaker's mood?",
                         "answer_gt": "...", "meta_info": "...", "task_name": "speech_QA",
                         "dataset_name": "...", "uniq_id": 1},
        ),
        Task(
            name="airbench_foundation", kind="foundation", metric="choice_acc", chat=True,
            description="AIR-Bench foundation multiple choice, accuracy per task and dataset",
            data_files=("Foundation_meta.json", "Foundation/Foundation_meta.json"),
            prompt=FOUNDATION_PROMPT,
            row_example={"path": "x.wav", "question": "...", "choice_a": "...",
                         "choice_b": "...", "choice_c": "...", "choice_d": "...",
                         "answer_gt": "...", "task_name": "Speaker_Gender_Recognition",
                         "dataset_name": "...", "uniq_id": 1},
        ),
        Task(
            name="generic", kind="generic", metric="acc",
            description="any JSONL in the row format; pick --metric (wer/cer/bleu/acc) and "
            "--language for WER/CER",
            data_files=("eval.jsonl",),
            row_example={"audio": "clips/0001.wav", "prompt": "Describe the sound:", "gt": "...",
                         "source": "my_set"},
        ),
    ]  # fmt: skip
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _build_registry()
ALIASES = {"fluers_zh": "fleurs_zh", "airbench": "airbench_chat"}  # the original's spellings


def get_task(name: str, *, metric: str | None = None, language: str | None = None) -> Task:
    """Look a task up; `generic` takes its metric (and WER/CER language) from the arguments."""
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if task.kind != "generic":
        if metric is not None and metric != task.metric:
            raise ValueError(f"task {task.name} is scored with {task.metric}, not {metric}")
        return task
    metric = metric or task.metric
    if metric in ("wer", "cer"):
        language = language or ("zh" if metric == "cer" else "en")
    elif metric not in ("bleu", "acc"):
        raise ValueError(f"generic task metric must be wer, cer, bleu or acc, not {metric!r}")
    if metric == "cer" and language not in ("zh", "yue"):
        raise ValueError("cer is the per-character score of zh and yue; use --language zh|yue")
    if metric == "wer" and language in ("zh", "yue"):
        metric = "cer"
    return replace(task, metric=metric, language=language)


# --------------------------------------------------------------------------- prompts


def _languages(task: Task, source: str) -> dict[str, str]:
    """Placeholder values: {lang} {language} for ASR; {lang} {target_language} for S2TT."""
    if task.kind == "s2tt":
        parts = source.split("_")
        src = parts[-3] if len(parts) >= 3 else "en"
        tgt = parts[-2] if len(parts) >= 2 else "en"
        name = LANGUAGE_NAMES.get(tgt.split("-")[0], tgt)
        return {"lang": src, "target_language": name}
    lang = task.language or "en"
    return {"lang": lang, "language": LANGUAGE_NAMES.get(lang, lang)}


def _fill(template: str, values: dict[str, str]) -> str:
    # Only known placeholders are replaced: prompts may hold other braces.
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def default_prompt(task: Task, source: str) -> str:
    if task.prompt is None:
        raise DataError(f"task {task.name} has no default prompt: every row needs a `prompt`")
    return _fill(task.prompt, _languages(task, source))


def resolve_prompt(
    task: Task, row: EvalRow, *, variant: str = "base", override: str | None = None
) -> tuple[str, bool]:
    """(prompt text, chat?) for a row: `override` > instruct variant > the row's > default.

    `override` may hold `{prompt}` (the row's prompt) and the language placeholders.
    """
    if variant not in ("base", "instruct"):
        raise ValueError(f"prompt variant must be 'base' or 'instruct', not {variant!r}")
    chat = task.chat or variant == "instruct"
    if override is not None:
        return _fill(override, {"prompt": row.prompt, **_languages(task, row.source)}), chat
    if variant == "instruct" and not task.chat:
        if task.instruct_prompt is None:
            raise ValueError(f"task {task.name} has no instruct prompt; pass --prompt to write one")
        return _fill(task.instruct_prompt, _languages(task, row.source)), True
    return row.prompt, chat
