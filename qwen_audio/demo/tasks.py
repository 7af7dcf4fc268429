"""The demo's tasks as natural-language prompts, in the chat format that the API and trainer take.

A training row is one conversation::

    {"messages": [
        {"role": "user", "content": [{"type": "audio", "audio_url": "/data/speech/000001.flac"},
                                     {"type": "text", "text": "What does the person say?"}]},
        {"role": "assistant", "content": "The dog ate my sandwich."}]}

Voice chat rows have only the audio part: the question is spoken. A speech clip's side questions
(voice, rate, word count) are follow-up turns of its transcription conversation, in random order.
An eval row is the generic eval format: ``{"audio", "prompt", "gt", "source"}``. The eval prompts
below also appear, word for word, in training, so the model learns to answer them with the bare
label that accuracy is scored on.
"""

from __future__ import annotations

import random

from qwen_audio.demo.sounds import SOUND_CLASSES, number_word

EVAL_ASR_PROMPT = "What does the person say?"
EVAL_VOICE_PROMPT = "Is the speaker's voice male or female? Answer with one word."
EVAL_SOUND_PROMPT = f"What kind of sound is this? Answer with one of: {', '.join(SOUND_CLASSES)}."

TRANSCRIBE_PROMPTS = (
    EVAL_ASR_PROMPT,
    EVAL_ASR_PROMPT,
    "Transcribe the speech.",
    "What is being said in this recording?",
    "Please write down what you hear.",
    "Transcribe this audio.",
    "What are the exact words spoken?",
    "Can you tell me what was said?",
    "Write out the speech in this clip.",
)
RATE_WORDS = {"slow": "slowly", "normal": "at a normal pace", "fast": "fast"}


def user(audio: str, text: str | None, rng: random.Random) -> dict:
    parts: list[dict] = [{"type": "audio", "audio_url": audio}]
    if text is not None:
        part = {"type": "text", "text": text}
        parts = [*parts, part] if rng.random() < 0.85 else [part, *parts]
    return {"role": "user", "content": parts}


def chat_row(audio: str, prompt: str | None, answer: str, rng: random.Random) -> dict:
    return conversation(audio, [(prompt, answer)], rng)


def conversation(audio: str, turns: list[tuple[str | None, str]], rng: random.Random) -> dict:
    """Several questions about one clip; the audio comes with the first question.

    A follow-up question costs the trainer a few text tokens, where a row of its own costs a whole
    pass over the clip's ~90 audio tokens again.
    """
    messages: list[dict] = []
    for i, (prompt, answer) in enumerate(turns):
        if i == 0:
            messages.append(user(audio, prompt, rng))
        else:
            messages.append({"role": "user", "content": [{"type": "text", "text": prompt}]})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def eval_row(audio: str, prompt: str, gt: str, source: str) -> dict:
    return {"audio": audio, "prompt": prompt, "gt": gt, "source": source}


def transcription(text: str, rng: random.Random) -> tuple[str, str]:
    return rng.choice(TRANSCRIBE_PROMPTS), text


def voice(gender: str, rate: str, rng: random.Random) -> tuple[str, str]:
    person = "man" if gender == "male" else "woman"
    return rng.choice(
        (
            (EVAL_VOICE_PROMPT, gender),
            (EVAL_VOICE_PROMPT, gender),
            ("Is this a man or a woman speaking?", f"A {person}."),
            ("Describe the speaker's voice.", f"A {gender} voice, speaking {RATE_WORDS[rate]}."),
            ("Who is talking, a man or a woman?", f"It is a {person}."),
        )
    )


def speech_rate(rate: str, rng: random.Random) -> tuple[str, str]:
    return rng.choice(
        (
            ("How fast is the person speaking?", f"The person is speaking {RATE_WORDS[rate]}."),
            ("Is the speech slow, normal or fast? Answer with one word.", rate),
            ("Is the speaker talking slowly, normally or quickly?", f"{rate.capitalize()}."),
        )
    )


def word_count(text: str, rng: random.Random) -> tuple[str, str]:
    n = number_word(len(text.split()))
    return rng.choice(
        (
            ("How many words does the person say?", f"The person says {n} words."),
            ("Count the words in this recording.", f"{n.capitalize()} words."),
        )
    )


def speech_presence(is_speech: bool, description: str, rng: random.Random) -> tuple[str, str]:
    prompt = rng.choice(("Is there any speech in this audio?", "Is someone talking here?"))
    if is_speech:
        return prompt, "Yes, someone is speaking."
    return prompt, f"No, there is no speech. {description}"


def sound(label: str, description: str, rng: random.Random) -> tuple[str, str]:
    return rng.choice(
        (
            (EVAL_SOUND_PROMPT, label),
            (EVAL_SOUND_PROMPT, label),
            ("Describe the sound.", description),
            ("What do you hear?", description),
            ("What is this sound?", description),
        )
    )
