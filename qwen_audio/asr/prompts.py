"""Prompts per style and language, from one language table, and the rule that picks the style.

- chat (Instruct checkpoints): a user turn holding the segment's audio and
  "Transcribe the speech." (plus "The speech is in <Language>." when a language is given) or
  "Translate the speech into English."; a context prompt (the API's `prompt`) follows as
  "\\nContext: ...".
- base: the raw ASR prompt of the original evaluation,
  `<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>`
  (the tag only when a language is given; the model writes its own otherwise), or
  "... translate the speech into English: <|xx|>". A context prompt is not used.

The style is read from the checkpoint, not its folder name (`detect_style`).
"""

from __future__ import annotations

from typing import Any

AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"
STYLES = ("auto", "chat", "base")

# The one language table of the transcription front-ends (ISO 639-1, and yue for Cantonese).
LANGUAGES = {
    "ar": "Arabic", "ca": "Catalan", "cy": "Welsh", "de": "German", "en": "English",
    "es": "Spanish", "et": "Estonian", "fa": "Persian", "fr": "French", "hi": "Hindi",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "lv": "Latvian",
    "mn": "Mongolian", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ru": "Russian",
    "sl": "Slovenian", "sv": "Swedish", "ta": "Tamil", "th": "Thai", "tr": "Turkish",
    "vi": "Vietnamese", "yue": "Cantonese", "zh": "Chinese",
}  # fmt: skip


def language_name(code: str) -> str:
    """English name of a language code; an unknown code is returned as given."""
    return LANGUAGES.get(code, code)


def chat_instruction(task: str, language: str | None = None, context: str | None = None) -> str:
    if task == "translate":
        text = "Translate the speech into English."
    else:
        text = "Transcribe the speech."
        if language:
            text += f" The speech is in {language_name(language)}."
    if context:
        text += f"\nContext: {context}"
    return text


def base_prompt(task: str, language: str | None = None) -> str:
    what = "translate the speech into English" if task == "translate" else "recognize the speech"
    prompt = f"{AUDIO_PLACEHOLDER}Detect the language and {what}:"
    return prompt + (f" <|{language}|>" if language else "")


def detect_style(checkpoint: Any | None, override: str = "auto") -> str:
    """ "chat" or "base" for a loaded checkpoint (`qwen_audio.loading.Checkpoint`).

    chat when the folder ships a chat template (`chat_template.jinja`, `chat_template.json` or
    `tokenizer_config.json`'s `chat_template`) and its generation config does not contradict it:
    an Instruct model stops at `<|im_end|>`, so a generation config whose end tokens leave
    `<|im_end|>` out marks a base model even when a template was saved with it. No template: base.
    Without a checkpoint (an engine that exposes none) the style is chat. `override` other than
    "auto" wins.
    """
    if override not in STYLES:
        raise ValueError(f"unknown prompt style {override!r}; use auto, chat or base")
    if override != "auto":
        return override
    if checkpoint is None:
        return "chat"
    from ..prompt import load_chat_template  # here: keeps this module free of heavy imports

    if load_chat_template(checkpoint.path) is None:
        return "base"
    im_end = checkpoint.tokenizer.token_to_id("<|im_end|>")
    eos = tuple(checkpoint.generation.eos_token_ids or ())
    if eos and im_end is not None and im_end not in eos:
        return "base"
    return "chat"
