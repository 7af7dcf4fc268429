"""Chinese text normalizer of the original Qwen2-Audio ASR scoring.

The original scripts score Mandarin with SpeechIO's `cn_tn` `TextNorm` with every option off. Its
output is: numbers, dates, money, phone numbers, fractions and percentages read out in Chinese
characters, then every punctuation mark of a fixed list replaced by a space. This module is an
independent implementation that gives the same output, including the behaviours that a cleaner
normalizer would not have, because they change CER:

- rules run in a fixed order (dates, money, mobile and fixed-line phones, fractions, percentages,
  number + measure word, 4..32-digit runs, remaining numbers), each rewriting the *first
  occurrence* of the text it matched (`str.replace(old, new, 1)`), which is not always the place
  where it matched: `"15和5个"` -> `"一五和五个"`;
- numbers of 4 or more digits with no unit after them are read digit by digit
  (`"2023"` -> `"二零二三"`), and a 7-8 digit number is taken for a fixed-line phone number even
  before a measure word (`"1234567个"` -> `"一二三四五六七个"`);
- `两` replaces `二` before 百/千/万/亿... at the start of a number or after another such unit
  (`"200个"` -> `"两百个"`, `"1200个"` -> `"一千两百个"`), never before 十;
- a leading `一十` becomes `十` (`"15个"` -> `"十五个"`), all-zero numbers vanish (`"00个"` -> `"个"`);
- the punctuation list holds Chinese and ASCII marks but not every mark: the full-width full stop
  `．` (U+FF0E), `「` is in but e.g. `•` is not; marks outside the list survive and are scored.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import NamedTuple

DIGITS = "零一二三四五六七八九"
LIANG = "两"  # the alternative "two" used before 百/千/万/亿...
POINT = "点"

# (power of ten, character): the four small units, then the "mid" system's large units, where
# each one is 10^4 times the one before (亿 = 10^8, 兆 = 10^12, ...).
UNITS = (
    (1, "十"), (2, "百"), (3, "千"), (4, "万"), (8, "亿"), (12, "兆"), (16, "京"), (20, "垓"),
    (24, "秭"), (28, "穰"), (32, "沟"), (36, "涧"), (40, "正"), (44, "载"),
)  # fmt: skip
_UNIT_CHAR = dict(UNITS)

# Punctuation turned into spaces. Deliberately absent: the full-width full stop '．' (U+FF0E).
ZH_PUNCTUATION = (
    "！？｡。"  # sentence-final marks
    "＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､"  # full-width forms
    "、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-"
)
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in ZH_PUNCTUATION + string.punctuation})

# Measure words after which a number is read with units ("3456个" -> "三千四百五十六个").
# Only the number is rewritten, so which of two overlapping words matches does not matter.
_MEASURE_WORDS = (
    "匹张座回场尾条个首阙阵网炮顶丘棵只支袭辆挑担颗壳窠曲墙群腔砣客贯扎捆刀令打手罗坡山岭江溪"
    "钟队单双对出口头脚板跳枝件贴针线管名位身堂课本页家户层丝毫厘分钱两斤铢石钧锱忽寸尺丈里寻"
    "常铺程撮勺合升斗盘碗碟叠桶笼盆盒杯斛锅簋篮罐瓶壶卮盏箩箱煲啖袋钵年月日季刻时周天秒旬纪岁"
    "世更夜春夏秋冬代伏辈丸泡粒幢堆根道面片块"
)
_MEASURE = "(?:[千毫微]克|[千分厘毫微]米|[" + _MEASURE_WORDS + "])"
_MAGNITUDE = "(?:亿|千万|百万|万|千|百)"
# Alternation order matters here: the money rule rewrites the whole matched text.
_CURRENCY = f"(?:{_MAGNITUDE}|(?:{_MAGNITUDE}|)元|(?:{_MAGNITUDE}|)块|角|毛|分)"
_NUMBER = r"\d+(?:\.\d+)?"

_DATE_RE = re.compile(
    r"\D+(?P<m>(?:(?:[089]\d|(?:19|20)\d{2})年)?(?:\d{1,2}月(?:\d{1,2}[日号])?)?)"
)
_MONEY_RE = re.compile(rf"\D+(?P<m>{_NUMBER}[多余几]?{_CURRENCY}(?:\d{_CURRENCY}?)?)")
_MOBILE_RE = re.compile(r"\D(?P<m>(?:\+?86 ?)?1(?:[38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_FIXED_LINE_RE = re.compile(r"\D(?P<m>(?:0(?:10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION_RE = re.compile(r"(?P<m>\d+/\d+)")
_PERCENT_RE = re.compile(rf"(?P<m>{_NUMBER}%)")
_MEASURED_RE = re.compile(rf"(?P<m>{_NUMBER})[多余几]?{_MEASURE}")
_DIGIT_RUN_RE = re.compile(r"(?P<m>\d{4,32})")
_CARDINAL_RE = re.compile(rf"(?P<m>{_NUMBER})")
_NUMBER_RE = re.compile(_NUMBER)
_LATIN_TWO_RE = re.compile(r"(?P<m>(?P<a>[a-zA-Z]+)二(?P<b>[a-zA-Z]+))")


class _Symbol(NamedTuple):
    kind: str  # "digit" | "unit" | "point"
    value: int  # the digit, or the unit's power of ten


def _integer_symbols(s: str) -> list[_Symbol]:
    """Read an integer with units: "1010" -> 一 千 零 一 十."""
    t = s.lstrip("0")
    if not t:
        return []
    if len(t) == 1:
        digit = [_Symbol("digit", int(t))]
        return [_Symbol("digit", 0), *digit] if len(s) > 1 else digit  # "05" -> 零五
    power = max(p for p, _ in UNITS if p < len(t))
    return _integer_symbols(s[:-power]) + [_Symbol("unit", power)] + _integer_symbols(t[-power:])


def spell_number(number: str, *, units: bool = True) -> str:
    """Chinese reading of a decimal number string: "1200.5" -> "一千两百点五".

    `units=False` reads every digit on its own, with no 两 ("2023" -> "二零二三").
    """
    int_part, _, dec_part = number.partition(".")
    if units and len(int_part) > 1:
        symbols = _integer_symbols(int_part)
    else:
        symbols = [_Symbol("digit", int(c)) for c in int_part]
    if dec_part:
        symbols += [_Symbol("point", 0)] + [_Symbol("digit", int(c)) for c in dec_part]

    chars = []
    for i, sym in enumerate(symbols):
        if sym.kind == "unit":
            chars.append(_UNIT_CHAR[sym.value])
        elif sym.kind == "point":
            chars.append(POINT)
        elif sym.value == 2 and units and _takes_liang(symbols, i):
            chars.append(LIANG)
        else:
            chars.append(DIGITS[sym.value])
    text = "".join(chars)
    if text.startswith(POINT):
        return DIGITS[0] + text
    if len(text) >= 2 and text[0] == "一" and text[1] == "十":  # 10..19: "十五", not "一十五"
        text = text[1:]
    return text


def _takes_liang(symbols: list[_Symbol], i: int) -> bool:
    """二 -> 两 before a unit above 十, at the start or right after a unit above 十."""
    nxt = symbols[i + 1] if i + 1 < len(symbols) else None
    prev = symbols[i - 1] if i > 0 else None
    if nxt is None or nxt.kind != "unit" or nxt.value == 1:
        return False
    return prev is None or (prev.kind == "unit" and prev.value != 1)


def _read_digits(s: str) -> str:
    return spell_number(s, units=False)


def _date(text: str) -> str:
    year, sep, rest = text.partition("年")
    if not sep:
        year, rest = "", text
    out = _read_digits(year) + "年" if sep else ""
    month, sep, day = rest.partition("月")
    if sep:
        out += spell_number(month) + "月"
        if day:
            out += spell_number(day[:-1]) + day[-1]
    return out


def _money(text: str) -> str:
    # Every occurrence of each number is rewritten, as the original does.
    for number in [m.group() for m in _NUMBER_RE.finditer(text)]:
        text = text.replace(number, spell_number(number))
    return text


def _mobile(text: str) -> str:
    return "".join(_read_digits(part) for part in text.strip("+").split())


def _fixed_line(text: str) -> str:
    return "".join(_read_digits(part) for part in text.split("-"))


def _fraction(text: str) -> str:
    numerator, denominator = text.split("/")
    return spell_number(denominator) + "分之" + spell_number(numerator)


def _percent(text: str) -> str:
    return "百分之" + spell_number(text[:-1])


_RULES: tuple[tuple[re.Pattern, Callable[[str], str]], ...] = (
    (_DATE_RE, _date),
    (_MONEY_RE, _money),
    (_MOBILE_RE, _mobile),
    (_FIXED_LINE_RE, _fixed_line),
    (_FRACTION_RE, _fraction),
    (_PERCENT_RE, _percent),
    (_MEASURED_RE, spell_number),
    (_DIGIT_RUN_RE, _read_digits),
    (_CARDINAL_RE, spell_number),
)


def _apply(text: str, pattern: re.Pattern, rewrite: Callable[[str], str]) -> str:
    # All matches are found first, then each matched string's first occurrence is rewritten.
    for found in [m.group("m") for m in pattern.finditer(text)]:
        text = text.replace(found, rewrite(found), 1)
    return text


def normalize_numbers(text: str) -> str:
    """Read out the non-standard words (numbers, dates, money, ...) of `text` in Chinese."""
    text = "^" + text + "$"  # sentinels: the rules that need a non-digit around a number see one
    for pattern, rewrite in _RULES:
        if pattern is _PERCENT_RE:
            text = text.replace("％", "%")
        text = _apply(text, pattern, rewrite)
    for m in list(_LATIN_TWO_RE.finditer(text)):  # restore "O2O", "B2C": no 二 between letters
        text = text.replace(m.group("m"), m.group("a") + "2" + m.group("b"), 1)
    return text.lstrip("^").rstrip("$")


def normalize_chinese(text: str) -> str:
    """The whole Chinese normalizer: numbers read out, then punctuation to spaces."""
    return normalize_numbers(text).translate(_PUNCTUATION_TO_SPACE)
