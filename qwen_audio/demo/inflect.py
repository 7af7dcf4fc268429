"""English inflection for the demo grammar: plurals, a/an, and the five forms of a verb.

Rules plus small exception tables, enough for the words in ``lexicon.py`` (the tests in
``tests/test_demo_data.py`` show the cases). Multi-word entries inflect their head: "bus stop" ->
"bus stops", "wait for" -> "waited for".
"""

from __future__ import annotations

import re

# base past past-participle
_IRREGULAR = """
be was been; become became become; begin began begun; bite bit bitten; blow blew blown;
break broke broken; bring brought brought; build built built; buy bought bought;
catch caught caught; choose chose chosen; come came come; cut cut cut; do did done;
draw drew drawn; drink drank drunk; drive drove driven; eat ate eaten; fall fell fallen;
feed fed fed; feel felt felt; find found found; fly flew flown; forget forgot forgotten;
freeze froze frozen; get got gotten; give gave given; go went gone; grow grew grown;
hang hung hung; have had had; hear heard heard; hide hid hidden; hit hit hit; hold held held;
keep kept kept; know knew known; lay laid laid; leave left left; lend lent lent; let let let;
lose lost lost; make made made; meet met met; pay paid paid; put put put; read read read;
ride rode ridden; ring rang rung; run ran run; say said said; see saw seen; sell sold sold;
send sent sent; set set set; shake shook shaken; shine shone shone; shoot shot shot;
sing sang sung; sit sat sat; sleep slept slept; speak spoke spoken; spend spent spent;
spill spilled spilled; stand stood stood; steal stole stolen; sweep swept swept; swim swam swum;
take took taken; teach taught taught; tell told told; think thought thought; throw threw thrown;
understand understood understood; wake woke woken; wear wore worn; win won won; write wrote written;
fight fought fought; forgive forgave forgiven; dig dug dug; tear tore torn; bend bent bent;
kneel knelt knelt; sink sank sunk; babysit babysat babysat; light lit lit; swing swung swung
"""
IRREGULAR = {
    parts[0]: (parts[1], parts[2])
    for parts in (entry.split() for entry in _IRREGULAR.split(";"))
    if len(parts) == 3
}
# Verbs that double their last consonant before -ed/-ing.
_DOUBLING = set(
    "stop drop plan shop jog hug chat clap grab nod rob rub skip hop tap wrap spin win run swim sit "
    "get put cut begin set hit let pet mop forget chop stir knit nap sip plug trim babysit".split()
)
_PLURAL = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "foot": "feet",
    "tooth": "teeth", "mouse": "mice", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "knife": "knives", "wife": "wives", "leaf": "leaves", "shelf": "shelves", "loaf": "loaves",
    "half": "halves", "life": "lives", "wolf": "wolves", "potato": "potatoes",
    "tomato": "tomatoes", "hero": "heroes", "goose": "geese", "calf": "calves",
    "police officer": "police officers", "scissors": "scissors", "drums": "drums",
    "cards": "cards", "sweet potato": "sweet potatoes", "mango": "mangoes",
    "fisherman": "fishermen", "waitress": "waitresses", "actress": "actresses",
}  # fmt: skip
_VOWEL_SOUND_EXCEPTIONS = {"hour": True, "honest": True, "university": False, "uniform": False,
                           "one": False, "useful": False, "unicorn": False, "european": False}  # fmt: skip


def _ends_with_consonant_y(word: str) -> bool:
    return len(word) > 1 and word[-1] == "y" and word[-2] not in "aeiou"


def plural(noun: str) -> str:
    if noun in _PLURAL:
        return _PLURAL[noun]
    if " " in noun:  # the head is the last word: "bus stop" -> "bus stops"
        head, _, last = noun.rpartition(" ")
        return f"{head} {plural(last)}"
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if _ends_with_consonant_y(noun):
        return noun[:-1] + "ies"
    return noun + "s"


def indefinite(phrase: str) -> str:
    """``a`` or ``an`` + phrase, by the first word's sound (approximated from spelling)."""
    first = phrase.split()[0].lower()
    vowel = _VOWEL_SOUND_EXCEPTIONS.get(first, first[0] in "aeiou")
    return ("an " if vowel else "a ") + phrase


def third_person(verb: str) -> str:
    head, sep, rest = verb.partition(" ")  # "wait for" -> "waits for"
    if head in ("have", "be"):
        form = {"have": "has", "be": "is"}[head]
    elif head in ("go", "do"):
        form = head + "es"
    elif re.search(r"(s|x|z|ch|sh)$", head):
        form = head + "es"
    elif _ends_with_consonant_y(head):
        form = head[:-1] + "ies"
    else:
        form = head + "s"
    return form + sep + rest


def _regular_ed(head: str) -> str:
    if head.endswith("e"):
        return head + "d"
    if _ends_with_consonant_y(head):
        return head[:-1] + "ied"
    if head in _DOUBLING:
        return head + head[-1] + "ed"
    return head + "ed"


def past(verb: str) -> str:
    head, sep, rest = verb.partition(" ")
    form = IRREGULAR[head][0] if head in IRREGULAR else _regular_ed(head)
    return form + sep + rest


def past_participle(verb: str) -> str:
    head, sep, rest = verb.partition(" ")
    form = IRREGULAR[head][1] if head in IRREGULAR else _regular_ed(head)
    return form + sep + rest


def present_participle(verb: str) -> str:
    head, sep, rest = verb.partition(" ")
    if head in ("be", "see", "agree", "free"):
        form = head + "ing"
    elif head.endswith("ie"):
        form = head[:-2] + "ying"
    elif head.endswith("e") and not head.endswith("ee"):
        form = head[:-1] + "ing"
    elif head in _DOUBLING:
        form = head + head[-1] + "ing"
    else:
        form = head + "ing"
    return form + sep + rest
