"""The demo data generator: text grammar, held-out split, sounds, and a tiny end-to-end run."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qwen_audio.demo import inflect, questions, speech, tasks
from qwen_audio.demo import lexicon as lx
from qwen_audio.demo.grammar import Grammar, is_heldout_shape
from qwen_audio.demo.sounds import SOUND_CLASSES, colored_noise, make_sound, number_word

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)
TINY = 0.01


@pytest.mark.parametrize(
    "word, plural",
    [("box", "boxes"), ("city", "cities"), ("day", "days"), ("knife", "knives"),
     ("child", "children"), ("bus stop", "bus stops"), ("sheep", "sheep"), ("dish", "dishes")],
)  # fmt: skip
def test_plural(word, plural):
    assert inflect.plural(word) == plural


@pytest.mark.parametrize(
    "verb, forms",
    [("stop", ("stops", "stopped", "stopped", "stopping")),
     ("carry", ("carries", "carried", "carried", "carrying")),
     ("make", ("makes", "made", "made", "making")), ("go", ("goes", "went", "gone", "going")),
     ("wait for", ("waits for", "waited for", "waited for", "waiting for")),
     ("see", ("sees", "saw", "seen", "seeing")), ("watch", ("watches", "watched", "watched", "watching")),
     ("forget", ("forgets", "forgot", "forgotten", "forgetting")), ("play", ("plays", "played", "played", "playing"))],
)  # fmt: skip
def test_verb_forms(verb, forms):
    got = (inflect.third_person(verb), inflect.past(verb), inflect.past_participle(verb))
    assert (*got, inflect.present_participle(verb)) == forms


@pytest.mark.parametrize(
    "phrase, expected",
    [("apple", "an apple"), ("hour", "an hour"), ("university", "a university"), ("red cup", "a red cup")],
)  # fmt: skip
def test_indefinite_article(phrase, expected):
    assert inflect.indefinite(phrase) == expected


def test_vocabulary_is_broad():
    assert len(lx.all_words()) > 1700


def test_grammar_is_deterministic_and_varied():
    a = [s.text for s in (Grammar(random.Random(3)).sentence() for _ in range(300))]
    b = [s.text for s in (Grammar(random.Random(3)).sentence() for _ in range(300))]
    assert a == b
    g = Grammar(random.Random(4))
    sents = [g.sentence() for _ in range(2000)]
    assert len({s.text for s in sents}) > 1990
    shapes = {c for s in sents for c in s.clause_shapes}
    assert len(shapes) > 1000  # structure varies, not only the words in fixed templates
    assert all(3 <= s.num_words <= 18 for s in sents)
    assert all(s.text[0].isupper() and s.text[-1] in ".?" for s in sents)
    moods = {c.split("|")[1] for c in shapes}
    assert {"decl", "ynq", "imp", "lets", "wh_subj", "wh_obj", "wh_where"} <= moods
    tenses = {c.split("|")[2] for c in shapes}
    assert set(("pres", "past", "fut", "going", "prog", "pastprog", "perf", "modal")) <= tenses


def test_heldout_split_is_by_shape():
    g = Grammar(random.Random(5))
    sents = [g.sentence() for _ in range(3000)]
    held = [s for s in sents if s.heldout is True]
    train = [s for s in sents if s.heldout is False]
    assert 0.05 < len(held) / len(sents) < 0.25
    train_shapes = {c for s in train for c in s.clause_shapes}
    assert not {c for s in held for c in s.clause_shapes} & train_shapes
    assert all(is_heldout_shape(c) for s in held for c in s.clause_shapes)


def test_sounds_are_labelled_and_seeded():
    for label in SOUND_CLASSES:
        a, desc = make_sound(label, np.random.default_rng(1))
        b, _ = make_sound(label, np.random.default_rng(1))
        assert np.array_equal(a, b) and a.dtype == np.float32
        assert 0.9 * 16000 < a.size < 5.5 * 16000 and np.abs(a).max() <= 1.0
        assert desc.endswith(".")
    silence, _ = make_sound("silence", np.random.default_rng(0))
    assert np.abs(silence).max() < 1e-2


def test_noise_colours_have_their_slopes():
    rng = np.random.default_rng(0)
    for colour, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        x = colored_noise(2**16, colour, rng)
        power = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(x.size)
        band = (f > 0.005) & (f < 0.4)
        fit = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
        assert abs(fit - slope) < 0.15, (colour, fit)


def test_number_words():
    assert [number_word(n) for n in (0, 7, 13, 20, 42)] == [
        "zero", "seven", "thirteen", "twenty", "forty-two"
    ]  # fmt: skip


def test_questions_have_answers_and_a_heldout_part():
    qa = questions.all_questions()
    assert len(qa) > 500 and len(dict(qa)) == len(qa)
    assert dict(qa)["What is three plus four?"] == "Three plus four is seven."
    held = [q for q, _ in qa if questions.is_heldout_question(q)]
    assert 0.05 * len(qa) < len(held) < 0.15 * len(qa)


def test_voices_split_by_variant():
    train, held = speech.voices(False), speech.voices(True)
    assert not {v for v, _ in train} & {v for v, _ in held}
    assert {g for _, g in held} == {"male", "female"} == {g for _, g in train}


@needs_espeak
def test_espeak_speech_renders():
    spec = speech.SpeechSpec(
        "The cat sat on the mat.", "en-us", "f2", "female", "normal", 170, 50, 7
    )
    a = speech.render_speech(spec)
    assert a.dtype == np.float32 and 1.0 * 16000 < a.size < 4 * 16000
    assert np.array_equal(a, speech.render_speech(spec))


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    from qwen_audio.demo.data import generate

    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    generate(a, seed=11, scale=TINY, workers=2)
    generate(b, seed=11, scale=TINY, workers=1)
    return a, b


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_generation_is_deterministic(tiny_sets):
    a, b = tiny_sets
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name == "manifest.json":
            continue
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    ma.pop("generation_seconds"), mb.pop("generation_seconds")
    assert ma == mb


def test_tiny_rows_are_valid(tiny_sets):
    root = tiny_sets[0]
    train = _read_jsonl(root / "train.jsonl")
    valid = _read_jsonl(root / "valid.jsonl")
    assert len(train) > 100 and len(valid) > 5
    prompts, follow_ups = set(), 0
    for row in train + valid:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in messages[1::2])
        audio = [p for p in messages[0]["content"] if p["type"] == "audio"]
        assert len(audio) == 1  # one clip per conversation, with the first question
        assert (root / audio[0]["audio_url"]).is_file()  # relative to the JSONL's folder
        for i, user in enumerate(messages[0::2]):
            text = [p for p in user["content"] if p["type"] == "text"]
            assert len(text) <= 1 and (i == 0 or (len(text) == 1 == len(user["content"])))
            prompts.update(p["text"] for p in text)
        follow_ups += len(messages) // 2 - 1
    assert follow_ups > 0.3 * len(train)  # side questions ride along with a transcription
    voice_chat = [r for r in train if len(r["messages"][0]["content"]) == 1]
    assert voice_chat  # the question is only spoken
    for p in (tasks.EVAL_ASR_PROMPT, tasks.EVAL_VOICE_PROMPT, tasks.EVAL_SOUND_PROMPT):
        assert p in prompts
    for source, gts in (("demo_asr_heldout", None), ("demo_voice", {"male", "female"}),
                        ("demo_sound", set(SOUND_CLASSES))):  # fmt: skip
        rows = _read_jsonl(root / "eval" / f"{source}.jsonl")
        assert rows and all(r["source"] == source for r in rows)
        assert all(set(r) == {"audio", "prompt", "gt", "source"} for r in rows)
        assert all((root / "eval" / r["audio"]).is_file() for r in rows)
        if gts:
            assert {r["gt"] for r in rows} <= gts
    assert {r["gt"] for r in _read_jsonl(root / "eval" / "demo_sound.jsonl")} == set(SOUND_CLASSES)


def test_tiny_heldout_shares_no_shape_or_voice(tiny_sets):
    root = tiny_sets[0]
    sents = _read_jsonl(root / "text" / "sentences.jsonl")
    train_shapes = {c for s in sents if s["split"] == "train" for c in s["shapes"]}
    held = [s for s in sents if s["split"] == "heldout"]
    assert held and not {c for s in held for c in s["shapes"]} & train_shapes
    heldout_text = {s["text"] for s in held}
    train_text = (root / "text" / "train_text.txt").read_text()
    assert len(train_text.splitlines()) == len(_read_jsonl(root / "train.jsonl"))
    assert not [t for t in heldout_text if t in train_text]
    for row in _read_jsonl(root / "eval" / "demo_asr_heldout.jsonl"):
        assert row["gt"] in heldout_text and "/speech/heldout/" in row["audio"]


def test_tiny_audio_decodes(tiny_sets):
    import av

    root = tiny_sets[0]
    files = sorted(root.rglob("*.flac"))
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(files) == sum(manifest["clips"].values())
    for f in files:
        audio, sr = sf.read(f, dtype="float32")
        assert sr == 16000 and audio.ndim == 1 and 0.3 * sr < audio.size < 30 * sr
    with av.open(str(files[0])) as container:  # a second, independent decoder (FFmpeg)
        frames = [fr.to_ndarray() for fr in container.decode(audio=0)]
        assert container.streams.audio[0].sample_rate == 16000
    assert sum(fr.shape[-1] for fr in frames) == sf.info(files[0]).frames
