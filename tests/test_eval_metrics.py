"""Metrics against independent computations: jiwer / editdistance for WER and CER, a BLEU written
here from its definition (on tokens from the tokenizers' own libraries) for BLEU."""

from __future__ import annotations

import math
from collections import Counter

import jiwer
import pytest

from qwen_audio.eval import metrics
from qwen_audio.eval.normalize import asr_tokens


def test_wer_matches_jiwer_on_normalized_text():
    refs = ["The cat sat on the mat.", "Hello, world!", "twenty five dollars please", "I see"]
    hyps = ["the cat sit on mat", "hello world", "$25 please", "I see you"]
    result = metrics.error_rate(refs, hyps, "en")
    # jiwer on the same normalized words: corpus WER = all errors / all reference words
    norm_refs = [" ".join(asr_tokens(r, "en")) for r in refs]
    norm_hyps = [" ".join(asr_tokens(h, "en")) for h in hyps]
    assert result.value == pytest.approx(jiwer.wer(norm_refs, norm_hyps))
    assert (result.edits, result.ref_tokens, result.n) == (3, 12, 4)
    assert result.value == pytest.approx(3 / 12)


def test_chinese_cer_matches_jiwer_and_editdistance():
    import editdistance

    refs = ["今天天气很好。", "我有15个苹果", "他说：Hello！"]
    hyps = ["今天天气真好", "我有十五个苹果", "他说 hallo"]
    result = metrics.error_rate(refs, hyps, "zh")
    ref_chars = ["".join(asr_tokens(r, "zh")) for r in refs]
    hyp_chars = ["".join(asr_tokens(h, "zh")) for h in hyps]
    assert ref_chars == ["今天天气很好", "我有十五个苹果", "他说hello"]
    edits = sum(editdistance.eval(list(r), list(h)) for r, h in zip(ref_chars, hyp_chars))
    total = sum(len(r) for r in ref_chars)
    assert (result.edits, result.ref_tokens) == (edits, total) == (2, 20)
    assert result.value == pytest.approx(jiwer.cer(ref_chars, hyp_chars))


def test_cantonese_cer_converts_to_simplified_on_both_sides():
    result = metrics.error_rate(["我們在這裡"], ["我们在这里"], "yue")
    assert (result.value, result.ref_tokens) == (0.0, 5)
    assert metrics.error_rate_name("yue") == "cer" and metrics.error_rate_name("fr") == "wer"


def test_empty_first_reference_does_not_crash():
    # The original crashes on ref_items[0] here; the pair still counts its insertions.
    result = metrics.error_rate(["", "a b"], ["x", "a b"], "en")
    assert (result.value, result.edits, result.ref_tokens) == (0.5, 1, 2)


def test_all_empty_source_is_not_defined():
    # The original divides by zero; with no reference token there is no rate to report.
    result = metrics.error_rate(["", "[noise]", "<|en|>"], ["", "hi", ""], "en")
    assert result.value is None
    assert (result.edits, result.ref_tokens, result.n) == (1, 0, 3)


def test_error_rate_checks_lengths():
    with pytest.raises(ValueError):
        metrics.error_rate(["a"], [], "en")


# --------------------------------------------------------------------------- BLEU


def _bleu(refs: list[list[str]], hyps: list[list[str]]) -> float:
    """Corpus BLEU-4 from the definition (no smoothing: the inputs have a match at every order)."""
    matches, totals = [0] * 4, [0] * 4
    for ref, hyp in zip(refs, hyps):
        for n in range(1, 5):
            ref_ngrams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            hyp_ngrams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
            matches[n - 1] += sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    assert all(matches), "the test inputs must match at every n-gram order"
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    ref_len, hyp_len = sum(map(len, refs)), sum(map(len, hyps))
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_precision)


def test_bleu_13a():
    refs = ["the cat sat on the mat", "a quick brown fox jumps over the dog"]
    hyps = ["the cat sat on the mat today", "a quick brown fox jumps over it"]
    expected = _bleu([r.split() for r in refs], [h.split() for h in hyps])
    assert metrics.corpus_bleu(refs, hyps, "13a") == pytest.approx(expected, abs=1e-9)


def test_bleu_chinese_per_character():
    refs = ["今天天气很好我们去公园散步", "他喜欢在周末读书"]
    hyps = ["今天天气很好我们去公园玩", "他喜欢在周末看书"]
    expected = _bleu([list(r) for r in refs], [list(h) for h in hyps])
    assert metrics.corpus_bleu(refs, hyps, "zh") == pytest.approx(expected, abs=1e-9)


def test_bleu_japanese_mecab():
    MeCab = pytest.importorskip("MeCab")
    ipadic = pytest.importorskip("ipadic")
    tagger = MeCab.Tagger(ipadic.MECAB_ARGS + " -Owakati")
    refs = ["今日はとても良い天気ですね", "私は毎朝コーヒーを飲みます"]
    hyps = ["今日はとても良い天気です", "私は毎朝紅茶を飲みます"]
    tokens = [tagger.parse(s).split() for s in refs + hyps]
    expected = _bleu(tokens[:2], tokens[2:])
    assert metrics.corpus_bleu(refs, hyps, "ja-mecab") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "source,tokenizer",
    [
        ("covost2_en_zh_test", "zh"),
        ("covost2_en_ja_test", "ja-mecab"),
        ("covost2_en_de_test", "13a"),
        ("covost2_zh_en_test", "13a"),
        ("covost2_en_zh-CN_test", "13a"),  # exactly as the original: only "zh" is Chinese
        ("covost2", "13a"),
    ],
)
def test_bleu_tokenizer_from_source(source, tokenizer):
    assert metrics.bleu_tokenizer(source) == tokenizer


# --------------------------------------------------------------------------- accuracy


def test_accuracy_strips_leading_whitespace_only():
    refs = ["sadness", "anger", "surprise", "sadness", "joy"]
    hyps = ["Sadness", "anger.", "surprise ", " sadness", "\njoy"]
    assert metrics.accuracy(refs, hyps) == pytest.approx(2 / 5)


@pytest.mark.parametrize(
    "response,letter",
    [
        ("B. a dog barking", "B"),
        ("A", "A"),
        ("The answer is C.", "C"),
        (" \nD\n", "D"),
        ("I am not sure", None),
        ("", None),
        ("None", None),
    ],
)
def test_choice_letter(response, letter):
    assert metrics.choice_letter(response) == letter


def test_choice_accuracy_leaves_failed_answers_out():
    acc = metrics.choice_accuracy(["A", "B", "C", "D"], ["A.", "C", "no idea", "The answer is D."])
    assert (acc.correct, acc.total, acc.failed) == (2, 3, 1)
    assert acc.value == pytest.approx(2 / 3)
    assert metrics.choice_accuracy(["A"], ["?"]).value is None
