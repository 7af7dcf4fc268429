"""Table tests for the ASR clean-up and normalizers of the original Qwen2-Audio scoring."""

from __future__ import annotations

import pytest

from qwen_audio.eval.normalize import (
    asr_tokens,
    basic_normalize,
    clean_text,
    english_normalize,
    normalize_text,
    scoring_tokens,
)
from qwen_audio.eval.zh_normalize import normalize_chinese, spell_number

CLEAN_CASES = [
    # (text, language, cleaned)
    ("<|en|>hello <|endoftext|>world", "en", "hello world"),
    ("Hello , world !", "en", "Hello, world!"),
    ("a  b\t\nc", "en", "a b c"),
    ("   leading and trailing   ", "en", "leading and trailing "),
    ("wait ; what : yes ? no .", "fr", "wait; what: yes? no."),
    ("你 好 ， 世界 。", "zh", "你好，世界。"),  # zh: every space goes
    ("<|zh|> 今天 天气", "zh", "今天天气"),
    ("你 好", "yue", "你 好"),  # only zh loses its spaces
    ("", "en", ""),
]


@pytest.mark.parametrize("text,language,cleaned", CLEAN_CASES)
def test_clean_text(text, language, cleaned):
    assert clean_text(text, language) == cleaned


ENGLISH_CASES = [
    # English normalizer then basic normalizer, then scoring tokens
    ("twenty five dollars", ["25"]),  # "$25" from the English one, "$" dropped by the basic one
    ("It costs 3.5 euros.", ["it", "costs", "3", "5"]),
    ("3.5", ["3", "5"]),
    ("Mr. Smith's car won't start", ["mister", "smith", "is", "car", "will", "not", "start"]),
    ("hello [laughter] world (noise)", ["hello", "world"]),
    ("one hundred and one", ["101"]),
    ("ten percent", ["10"]),
    ("Colour of the theatre", ["color", "of", "the", "theater"]),
    ("hmm uh well", ["well"]),
    ("<|en|>Hello , World !", ["hello", "world"]),
    # the four rules PyPI whisper-normalizer has and the original's copy lacks stay off
    ("I kinda know, sorta.", ["i", "kinda", "know", "sorta"]),
    ("I dunno", ["i", "dunno"]),
    ("cause I said so", ["cause", "i", "said", "so"]),
]


@pytest.mark.parametrize("text,tokens", ENGLISH_CASES)
def test_english_tokens(text, tokens):
    assert asr_tokens(text, "en") == tokens


def test_pypi_normalizer_differs_exactly_on_the_four_rules():
    from whisper_normalizer.english import EnglishTextNormalizer

    pypi = EnglishTextNormalizer()
    for text, pypi_out, ours in [
        ("i kinda know", "i kind of know", "i kinda know"),
        ("sorta", "sort of", "sorta"),
        ("i dunno", "i do not know", "i dunno"),
        ("cause i can", "because i can", "cause i can"),
    ]:
        assert pypi(text).strip() == pypi_out
        assert english_normalize(text).strip() == ours
    # everything else is the same normalizer
    text = "Mr. Jones won't pay twenty five dollars, he's gonna pay 10%."
    assert english_normalize(text) == pypi(text)


FRENCH_CASES = [
    # basic normalizer only: accents kept, text in (), [] and <> dropped, no number handling
    ("Il a dit (bonjour) [rire] <bruit> éléphant, naïve.", ["il", "a", "dit", "éléphant", "naïve"]),
    ("C'est l'été !", ["c", "est", "l", "été"]),
    ("Vingt-cinq euros 25€", ["vingt", "cinq", "euros", "25"]),
]


@pytest.mark.parametrize("text,tokens", FRENCH_CASES)
def test_french_tokens(text, tokens):
    assert asr_tokens(text, "fr") == tokens


ZH_NORMALIZER_CASES = [
    # (input, normalized): dates, money, phones, fractions, percentages, measure words
    ("今天是2023年5月1日", "今天是二零二三年五月一日"),
    ("日期：1999年2月20日或09年3月15号。", "日期 一九九九年二月二十日或零九年三月十五号 "),
    ("金钱：12块5，34.5元，20.1万", "金钱 十二块五 三十四点五元 二十点一万"),
    ("3456万吨", "三千四百五十六万吨"),
    ("2938个", "两千九百三十八个"),
    ("200个", "两百个"),
    ("1200个", "一千两百个"),
    ("22个", "二十二个"),
    ("2个", "二个"),
    ("10010个", "一万零一十个"),
    ("00个", "个"),  # an all-zero number vanishes
    ("938", "九百三十八"),
    ("15", "十五"),
    ("3.5", "三点五"),
    ("10.5", "十点五"),
    ("0.5", "零点五"),
    ("今天吃了115个小笼包231个馒头", "今天吃了一百一十五个小笼包两百三十一个馒头"),
    ("有62％的概率", "有百分之六十二的概率"),
    ("百分数：80.03%。", "百分数 百分之八十点零三 "),
    ("分数：32477/76391。", "分数 七万六千三百九十一分之三万两千四百七十七 "),
    ("编号：31520181154418。", "编号 三一五二零一八一一五四四一八 "),  # 4+ digits: one by one
    ("2023", "二零二三"),
    (
        "手机：+86 19859213959或15659451527。",
        "手机 八六一九八五九二一三九五九或一五六五九四五一五二七 ",
    ),
    ("固话：0595-23865596或23880880。", "固话 零五九五二三八六五五九六或二三八八零八八零 "),
    ("1234567个", "一二三四五六七个"),  # a 7-digit run is a phone number before it is a count
    # no measure word "克"/"米" alone: the digit-run and cardinal rules read these
    ("纯数：2983.07克或12345.60米。", "纯数 二九八三 零七克或一二三四五 六十米 "),
    ("特殊：O2O或B2C。", "特殊 O2O或B2C "),
    # the first occurrence of the matched text is rewritten, not the matched place
    ("我有15和5个", "我有一五和五个"),
    ("你好．世界", "你好．世界"),  # '．' (U+FF0E) is not in the punctuation list
    ("你好，世界！「引号」", "你好 世界  引号 "),
]


@pytest.mark.parametrize("text,normalized", ZH_NORMALIZER_CASES)
def test_chinese_normalizer(text, normalized):
    assert normalize_chinese(text) == normalized


SPELL_CASES = [
    ("1", "一"),
    ("10", "十"),
    ("11", "十一"),
    ("20", "二十"),
    ("100", "一百"),
    ("101", "一百零一"),
    ("110", "一百一十"),
    ("1001", "一千零一"),
    ("2000", "两千"),
    ("20000", "两万"),
    ("22222", "两万两千两百二十二"),
    ("100000000", "一亿"),
    ("200000000", "两亿"),
    ("120000000", "一亿两千万"),
    ("1.05", "一点零五"),
]


@pytest.mark.parametrize("number,reading", SPELL_CASES)
def test_spell_number(number, reading):
    assert spell_number(number) == reading


def test_spell_digits():
    assert spell_number("2023", units=False) == "二零二三"
    assert spell_number("20.2", units=False) == "二零点二"


ZH_TOKEN_CASES = [
    # clean-up (spaces deleted), Chinese normalizer, punctuation-only tokens dropped, chars
    ("今天 天气 很好。", list("今天天气很好")),
    ("我有15个苹果", list("我有十五个苹果")),
    ("你好．世界", ["你", "好", "．", "世", "界"]),  # '．' survives and counts
    ("你好，．", ["你", "好"]),  # a '．' standing alone after a comma is a punctuation token
    ("ABC你好", ["a", "b", "c", "你", "好"]),  # Latin words count letter by letter
    ("Hello 世界", ["h", "e", "l", "l", "o", "世", "界"]),
    ("<|zh|>", []),
]


@pytest.mark.parametrize("text,tokens", ZH_TOKEN_CASES)
def test_chinese_tokens(text, tokens):
    assert asr_tokens(text, "zh") == tokens


YUE_CASES = [
    # traditional -> simplified, then the basic normalizer: digits are not read out
    ("我們在這裡 123", ["我", "们", "在", "这", "里", "1", "2", "3"]),
    ("佢哋話，「唔該」！", ["佢", "哋", "话", "唔", "该"]),
]


@pytest.mark.parametrize("text,tokens", YUE_CASES)
def test_cantonese_tokens(text, tokens):
    assert asr_tokens(text, "yue") == tokens


def test_scoring_tokens_drop_punctuation_only_tokens():
    assert scoring_tokens("a , b .. c", "en") == ["a", "b", "c"]
    assert scoring_tokens("a,b", "en") == ["a,b"]  # attached punctuation is not a token of its own
    assert scoring_tokens("A  B", "en") == ["a", "b"]


def test_other_languages_use_the_basic_normalizer():
    assert normalize_text("Grüße, Welt!", "de") == basic_normalize("Grüße, Welt!")
    assert asr_tokens("Grüße, Welt!", "de") == ["grüße", "welt"]
