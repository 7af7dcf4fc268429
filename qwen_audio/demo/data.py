"""Generate the demo model's training, validation and eval data, deterministically from a seed.

What is made (counts at ``scale=1``; ``--scale 0.01`` makes a set in seconds for tests):

    speech/train/  19,000 clips, one per distinct training sentence, training voices
    speech/heldout/   400 clips of held-out sentences (no shared clause shape) in held-out voices
    sound/train/    1,800 non-speech clips, 200 per class; sound/eval/ 270, 30 per class
    chat/train/     each training question x 3 voices; chat/heldout/ held-out questions x 1
    train.jsonl     one conversation per clip: transcription of every speech clip, with follow-up
                    questions on the speaker's voice (50% of clips), speech rate (30%), word count
                    (20%), is-there-speech (5%), in random order; the sound class or description
                    of every sound clip, is-there-speech (10%); voice chat
    valid.jsonl     the same tasks on the held-out speech, eval sounds and held-out questions
    eval/demo_asr_heldout.jsonl, eval/demo_voice.jsonl, eval/demo_sound.jsonl   (generic eval rows)
    text/sentences.jsonl (text, split, clause shapes), text/train_text.txt (the text of each
                    training conversation, one per line, for the tokenizer), manifest.json
                    (counts, seconds, versions)

Measured at scale 1 (seed 0, espeak-ng 1.51): 22,961 clips, 22.3 hours of audio (mean speech clip
3.7 s, longest ~10 s), 1.6 GB, 22,240 training rows, 721 validation rows; 12,216 distinct clause
shapes in the training sentences (321 held out), 3,757 distinct word forms; 229 s with 2 workers
on the 2-core test VM. One pass of the tiny.en encoder over 22 h is ~60 TFLOP (minutes on 2
cores), so a trainer with a frozen encoder should compute its outputs once.

Audio is 16 kHz mono 16-bit FLAC. Audio paths in a JSONL file are relative to that file's folder
(as the trainer and the eval runner resolve them), so the folder can be moved as a whole.
All randomness comes from ``seed``: sentences and tasks from one ``random.Random``, each clip from
its own numpy generator keyed by (seed, kind, index), so the result does not depend on which
worker renders which clip. Same seed + same espeak-ng version -> the same files, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from qwen_audio.demo import questions, speech, tasks
from qwen_audio.demo.grammar import Grammar, Sentence
from qwen_audio.demo.sounds import SAMPLE_RATE, SOUND_CLASSES, make_sound

MAX_WORKERS = 2
FULL_COUNTS = {
    "train_sentences": 19000,
    "heldout_sentences": 400,
    "train_sounds_per_class": 200,
    "eval_sounds_per_class": 30,
    "chat_voices_per_question": 3,
    "train_questions": 10**6,  # all of them at scale >= 0.2
}
# Every speech clip is transcribed; the side questions are follow-up turns of the same row (a few
# text tokens each, no second pass over the audio), asked about a fraction of the clips.
TASK_RATES = {"voice": 0.5, "rate": 0.3, "count": 0.2, "speech_presence": 0.05}
SOUND_PRESENCE_RATE = 0.1
RATE_CLASS_WEIGHTS = {"slow": 25, "normal": 50, "fast": 25}


@dataclass
class Plan:
    groups: dict[str, list[Job]]  # "speech/train" -> clips to render, in a fixed order
    train_sentences: list[Sentence]
    heldout_sentences: list[Sentence]


@dataclass(frozen=True)
class Job:
    path: str  # relative to the output folder
    seed: int
    speech: speech.SpeechSpec | None = None
    sound_label: str = ""


def counts_for(scale: float) -> dict[str, int]:
    c = {k: max(1, round(v * scale)) for k, v in FULL_COUNTS.items()}
    c["chat_voices_per_question"] = max(1, min(3, c["chat_voices_per_question"]))
    c["train_questions"] = max(5, round(len(questions.all_questions()) * min(1.0, scale * 5)))
    return c


def clip_seed(seed: int, kind: str, index: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}/{kind}/{index}".encode()).digest()[:4], "big")


def draw_sentences(
    seed: int, n_train: int, n_heldout: int
) -> tuple[list[Sentence], list[Sentence]]:
    """Distinct training and held-out sentences; mixed-shape sentences are skipped."""
    g = Grammar(random.Random(seed))
    train, heldout, seen = [], [], set()
    while len(train) < n_train or len(heldout) < n_heldout:
        s = g.sentence()
        if s.heldout is None or s.text in seen:
            continue
        bucket, limit = (heldout, n_heldout) if s.heldout else (train, n_train)
        if len(bucket) < limit:
            seen.add(s.text)
            bucket.append(s)
    return train, heldout


def speech_spec(text: str, heldout: bool, rng: random.Random, seed: int) -> speech.SpeechSpec:
    gender = rng.choice(("male", "female"))
    variant = rng.choice([v for v, g in speech.voices(heldout) if g == gender])
    rate = rng.choices(tuple(RATE_CLASS_WEIGHTS), tuple(RATE_CLASS_WEIGHTS.values()))[0]
    lo, hi = speech.RATES[rate]
    return speech.SpeechSpec(
        text=text,
        accent=rng.choice(speech.ACCENTS),
        variant=variant,
        gender=gender,
        rate_class=rate,
        wpm=rng.randint(lo, hi),
        pitch=rng.randint(*speech.PITCH_RANGE),
        seed=seed,
    )


def plan(seed: int, scale: float) -> Plan:
    """The sentences and every clip to render."""
    c = counts_for(scale)
    rng = random.Random(seed + 1)
    train, heldout = draw_sentences(seed, c["train_sentences"], c["heldout_sentences"])
    groups: dict[str, list[Job]] = {}
    for name, sents, held in (("speech/train", train, False), ("speech/heldout", heldout, True)):
        groups[name] = [
            Job(f"{name}/{i:06d}.flac", s, speech_spec(t.text, held, rng, s))
            for i, t in enumerate(sents)
            for s in [clip_seed(seed, name, i)]
        ]
    qa = questions.all_questions()
    train_q = [q for q, _ in qa if not questions.is_heldout_question(q)]
    train_q = random.Random(seed + 2).sample(train_q, min(len(train_q), c["train_questions"]))
    held_q = [q for q, _ in qa if questions.is_heldout_question(q)]
    for name, qs, held, reps in (
        ("chat/train", train_q, False, c["chat_voices_per_question"]),
        ("chat/heldout", held_q[: max(2, len(held_q) * c["heldout_sentences"] // 400)], True, 1),
    ):
        items = [q for q in qs for _ in range(reps)]
        groups[name] = [
            Job(f"{name}/{i:06d}.flac", s, speech_spec(q, held, rng, s))
            for i, q in enumerate(items)
            for s in [clip_seed(seed, name, i)]
        ]
    for name, per_class in (("sound/train", c["train_sounds_per_class"]), ("sound/eval", c["eval_sounds_per_class"])):  # fmt: skip
        labels = [label for label in SOUND_CLASSES for _ in range(per_class)]
        groups[name] = [
            Job(f"{name}/{i:06d}.flac", clip_seed(seed, name, i), sound_label=label)
            for i, label in enumerate(labels)
        ]
    return Plan(groups, train, heldout)


def render(job_and_root: tuple[Job, str]) -> dict:
    """Render and write one clip (runs in a worker); returns what the rows need."""
    job, root = job_and_root
    if job.speech is not None:
        audio, description = speech.render_speech(job.speech), ""
    else:
        audio, description = make_sound(job.sound_label, np.random.default_rng(job.seed))
    path = Path(root) / job.path
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return {"seconds": len(audio) / SAMPLE_RATE, "description": description}


def render_all(jobs: list[Job], root: Path, workers: int) -> list[dict]:
    args = [(j, str(root)) for j in jobs]
    workers = max(1, min(MAX_WORKERS, workers))
    if workers == 1:
        return [render(a) for a in args]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # no fork after torch
        return pool.map(render, args, chunksize=16)


def generate(out_dir: str | Path, seed: int = 0, scale: float = 1.0, workers: int = 2) -> dict:
    """Make the whole data set under ``out_dir``; returns the manifest."""
    t0 = time.time()
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    p = plan(seed, scale)
    groups = p.groups
    jobs = [j for g in groups.values() for j in g]
    results = dict(zip((j.path for j in jobs), render_all(jobs, root, workers)))
    rng = random.Random(seed + 3)
    answers = dict(questions.all_questions())
    train_rows, valid_rows = [], []
    evals: dict[str, list[dict]] = {"demo_asr_heldout": [], "demo_voice": [], "demo_sound": []}

    def add_speech(job: Job, rows: list[dict]) -> None:
        spec, audio = job.speech, job.path
        turns = [tasks.transcription(spec.text, rng)]
        extra = {
            "voice": lambda: tasks.voice(spec.gender, spec.rate_class, rng),
            "rate": lambda: tasks.speech_rate(spec.rate_class, rng),
            "count": lambda: tasks.word_count(spec.text, rng),
            "speech_presence": lambda: tasks.speech_presence(True, "", rng),
        }
        turns += [extra[task]() for task, p in TASK_RATES.items() if rng.random() < p]
        rng.shuffle(turns)  # each question is asked first sometimes, as the evals ask it
        rows.append(tasks.conversation(audio, turns, rng))

    def add_sound(job: Job, rows: list[dict]) -> None:
        audio, desc = job.path, results[job.path]["description"]
        turns = [tasks.sound(job.sound_label, desc, rng)]
        if rng.random() < SOUND_PRESENCE_RATE:
            turns.append(tasks.speech_presence(False, desc, rng))
        rng.shuffle(turns)
        rows.append(tasks.conversation(audio, turns, rng))

    for job in groups["speech/train"]:
        add_speech(job, train_rows)
    for job in groups["speech/heldout"]:
        add_speech(job, valid_rows)
        audio, spec = f"../{job.path}", job.speech  # eval files live in eval/
        evals["demo_asr_heldout"].append(tasks.eval_row(audio, tasks.EVAL_ASR_PROMPT, spec.text, "demo_asr_heldout"))  # fmt: skip
        evals["demo_voice"].append(tasks.eval_row(audio, tasks.EVAL_VOICE_PROMPT, spec.gender, "demo_voice"))  # fmt: skip
    for job in groups["sound/train"]:
        add_sound(job, train_rows)
    for job in groups["sound/eval"]:
        add_sound(job, valid_rows)
        audio = f"../{job.path}"
        evals["demo_sound"].append(tasks.eval_row(audio, tasks.EVAL_SOUND_PROMPT, job.sound_label, "demo_sound"))  # fmt: skip
    for name, rows in (("chat/train", train_rows), ("chat/heldout", valid_rows)):
        for job in groups[name]:
            rows.append(tasks.chat_row(job.path, None, answers[job.speech.text], rng))
    rng.shuffle(train_rows)

    _write_jsonl(root / "train.jsonl", train_rows)
    _write_jsonl(root / "valid.jsonl", valid_rows)
    for source, rows in evals.items():
        _write_jsonl(root / "eval" / f"{source}.jsonl", rows)
    _write_text(root, p, train_rows)
    manifest = _manifest(seed, scale, p, results, train_rows, valid_rows, evals)
    manifest["generation_seconds"] = round(time.time() - t0, 1)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_text(root: Path, p: Plan, train_rows: list[dict]) -> None:
    """Sentences with their shapes, and all training text (for the tokenizer)."""
    train, heldout = p.train_sentences, p.heldout_sentences
    (root / "text").mkdir(exist_ok=True)
    with (root / "text" / "sentences.jsonl").open("w") as f:
        for split, sents in (("train", train), ("heldout", heldout)):
            for s in sents:
                f.write(json.dumps({"text": s.text, "split": split, "shapes": list(s.clause_shapes)}) + "\n")  # fmt: skip
    # One line per training conversation, so that the tokenizer counts words as often as the
    # trainer will see them (a BPE spends its merges on what is frequent).
    lines = []
    for row in train_rows:
        texts = []
        for m in row["messages"]:
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]  # fmt: skip
            texts += [p["text"].replace("\n", " ") for p in parts if p["type"] == "text"]
        lines.append(" ".join(texts))
    (root / "text" / "train_text.txt").write_text("\n".join(lines) + "\n")


def _manifest(seed, scale, p: Plan, results, train_rows, valid_rows, evals) -> dict:
    groups = p.groups
    words = {w.strip(".,?!").lower() for s in p.train_sentences for w in s.text.split()}
    seconds = {name: round(sum(results[j.path]["seconds"] for j in jobs), 1) for name, jobs in groups.items()}  # fmt: skip
    return {
        "seed": seed,
        "scale": scale,
        "espeak_ng": speech.espeak_version(),
        "clips": {name: len(jobs) for name, jobs in groups.items()},
        "audio_seconds": seconds,
        "rows": {
            "train": len(train_rows),
            "valid": len(valid_rows),
            **{k: len(v) for k, v in evals.items()},
        },  # fmt: skip
        "counts": counts_for(scale),
        "sentences": {
            "train": len(p.train_sentences),
            "heldout": len(p.heldout_sentences),
            "train_clause_shapes": len({c for s in p.train_sentences for c in s.clause_shapes}),
            "heldout_clause_shapes": len({c for s in p.heldout_sentences for c in s.clause_shapes}),
            "train_distinct_words": len(words),
        },
        "task_rates": TASK_RATES,
        "sample_rate": SAMPLE_RATE,
        "heldout_variants": sorted(speech.HELDOUT_VARIANTS),
    }
