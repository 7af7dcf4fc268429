"""Text clean-up and normalizers of the original Qwen2-Audio ASR scoring.

For one (reference, hypothesis) pair the original scripts do, on both sides:

1. `clean_text`: every `<|...|>` tag becomes a space, whitespace runs become one space, the space
   before `! , . ? ; :` goes, leading spaces go; for Mandarin ("zh") every space goes.
2. `normalize_text`, by language:
   - en:  Whisper's English normalizer, then Whisper's basic normalizer ("twenty five dollars"
          -> "$25" -> "25"; "3.5" -> "3.5" -> "3 5");
   - zh:  the Chinese normalizer only (`zh_normalize`);
   - yue: traditional -> simplified characters (zhconv, "zh-cn"), then the basic normalizer
          (digits stay digits);
   - anything else (fr, ...): the basic normalizer (accents kept; text inside (), [] and <> is
          dropped).
3. `scoring_tokens`: no re-tokenization (sacrebleu's "none"); space-separated tokens made only of
   punctuation are dropped; lowercase; split on whitespace. zh and yue are then scored per
   character: the tokens are joined and split into characters, so a Latin word counts one
   token per letter.

The English normalizer is PyPI's `whisper-normalizer` with the four rules it has and the
original's copy lacks removed (kinda, sorta, dunno, cause): kept, they change WER on rows that
hold those words.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from .zh_normalize import normalize_chinese

PUNCS = "!,.?;:"  # marks that lose the space before them in the clean-up
CHARACTER_LANGUAGES = ("zh", "yue")  # scored per character (CER)

_TAG_RE = re.compile(r"<\|.*?\|>")
_SPACE_RE = re.compile(r"\s+")
_SPACE_BEFORE_PUNC_RE = re.compile(f" ?([{re.escape(PUNCS)}])")

# Contractions PyPI whisper-normalizer 0.1.15 expands and the original scripts' copy does not.
PYPI_ONLY_ENGLISH_RULES = (r"\bkinda\b", r"\bsorta\b", r"\bdunno\b", r"\bcause\b")


def clean_text(text: str, language: str) -> str:
    """The original clean-up applied to references and hypotheses before normalization."""
    text = _TAG_RE.sub(" ", text)
    text = _SPACE_RE.sub(" ", text)
    text = _SPACE_BEFORE_PUNC_RE.sub(r"\1", text)
    text = text.lstrip(" ")
    if language == "zh":
        text = _SPACE_RE.sub("", text)
    return text


@lru_cache(maxsize=1)
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    normalizer = EnglishTextNormalizer()
    normalizer.replacers = {
        pattern: replacement
        for pattern, replacement in normalizer.replacers.items()
        if pattern not in PYPI_ONLY_ENGLISH_RULES
    }
    return normalizer


@lru_cache(maxsize=1)
def _basic_normalizer():
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()  # remove_diacritics=False: accents are kept


def english_normalize(text: str) -> str:
    """Whisper's English normalizer as the original scripts had it."""
    return _english_normalizer()(text)


def basic_normalize(text: str) -> str:
    """Whisper's basic normalizer: lowercase, bracketed text dropped, symbols to spaces."""
    return _basic_normalizer()(text)


def to_simplified(text: str) -> str:
    import zhconv

    return zhconv.convert(text, "zh-cn")


def normalize_text(text: str, language: str) -> str:
    """The language's normalizer chain (step 2 of the module docstring)."""
    if language == "yue":
        text = to_simplified(text)
    if language == "en":
        text = english_normalize(text)
    if language == "zh":
        return normalize_chinese(text)
    return basic_normalize(text)


def _is_punctuation(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)  # True for ""


def scoring_tokens(normalized: str, language: str) -> list[str]:
    """Split normalized text into the tokens that WER/CER counts (step 3)."""
    kept = " ".join(t for t in normalized.split(" ") if not _is_punctuation(t))
    tokens = kept.lower().split()
    if language in CHARACTER_LANGUAGES:
        return list("".join(tokens))
    return tokens


def asr_tokens(text: str, language: str) -> list[str]:
    """Clean-up, normalization and tokenization of one reference or hypothesis."""
    return scoring_tokens(normalize_text(clean_text(text, language), language), language)
