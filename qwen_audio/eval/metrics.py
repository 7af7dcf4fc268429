"""Corpus metrics of the original Qwen2-Audio scoring: WER/CER, BLEU, accuracy.

Every function scores one *source* (the rows sharing a `source` value); callers group rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .normalize import CHARACTER_LANGUAGES, asr_tokens

CHOICE_LETTERS = "ABCD"


@dataclass(frozen=True)
class ErrorRate:
    """Corpus word (or character) error rate of one source."""

    value: float | None  # edits / ref_tokens; None when the references hold no token at all
    edits: int  # total Levenshtein distance over the source's pairs
    ref_tokens: int  # total reference tokens (words, or characters for zh/yue)
    n: int  # pairs scored


def error_rate(refs: Sequence[str], hyps: Sequence[str], language: str) -> ErrorRate:
    """Total edit distance over total reference tokens, after the original clean-up.

    The original divides by zero on a source whose references are all empty after
    normalization (and crashes earlier when the *first* one is): here such a source has
    `value=None` ("not defined"), with `edits` still counting the hypothesis tokens.
    """
    import editdistance

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    edits = ref_tokens = 0
    for ref, hyp in zip(refs, hyps):
        ref_items = asr_tokens(ref, language)
        hyp_items = asr_tokens(hyp, language)
        edits += editdistance.eval(ref_items, hyp_items)
        ref_tokens += len(ref_items)
    value = edits / ref_tokens if ref_tokens else None
    return ErrorRate(value=value, edits=edits, ref_tokens=ref_tokens, n=len(refs))


def error_rate_name(language: str) -> str:
    return "cer" if language in CHARACTER_LANGUAGES else "wer"


def bleu_tokenizer(source: str) -> str:
    """sacrebleu tokenizer for a CoVoST2 source: its target language is `source.split("_")[-2]`.

    "zh" -> "zh", "ja" -> "ja-mecab", anything else (including "zh-CN") -> "13a", exactly as the
    original. A source name with no "_" (which the original cannot score) gets "13a".
    """
    parts = source.split("_")
    target = parts[-2] if len(parts) >= 2 else ""
    return {"zh": "zh", "ja": "ja-mecab"}.get(target, "13a")


def corpus_bleu(refs: Sequence[str], hyps: Sequence[str], tokenize: str) -> float:
    """sacrebleu corpus BLEU (0..100) of raw outputs against one reference each."""
    import sacrebleu

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=tokenize).score


def accuracy(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Exact-match accuracy of `hyp.lstrip()` against `ref` (case and trailing text count)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("accuracy of an empty source")
    return sum(hyp.lstrip() == ref for ref, hyp in zip(refs, hyps)) / len(refs)


def choice_letter(response: str) -> str | None:
    """The option a multiple-choice answer picked, by AIR-Bench's foundation rule.

    The first character if it is A-D ("B. a dog"), else the second-to-last ("The answer is C.");
    None when neither is (the response then counts as failed, not as wrong).
    """
    text = response.strip().replace("\n", "")
    if not text or text == "None":
        return None
    if text[0] in CHOICE_LETTERS:
        return text[0]
    if len(text) > 1 and text[-2] in CHOICE_LETTERS:
        return text[-2]
    return None


@dataclass(frozen=True)
class ChoiceAccuracy:
    """AIR-Bench foundation accuracy of one source: failed answers are left out of `total`."""

    value: float | None  # correct / total; None when every answer failed to parse
    correct: int
    total: int
    failed: int


def choice_accuracy(gt_letters: Sequence[str], responses: Sequence[str]) -> ChoiceAccuracy:
    if len(gt_letters) != len(responses):
        raise ValueError(f"{len(gt_letters)} answers but {len(responses)} responses")
    correct = total = failed = 0
    for gt, response in zip(gt_letters, responses):
        letter = choice_letter(response)
        if letter is None:
            failed += 1
            continue
        total += 1
        correct += letter == gt
    return ChoiceAccuracy(correct / total if total else None, correct, total, failed)
