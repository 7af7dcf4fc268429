"""Noun phrases, places and descriptions for the demo grammar (``grammar.py`` builds clauses).

A noun phrase is drawn in one of ~15 structures: pronoun, name, determiner + noun, one or two
adjectives, possessive (my / Anna's), plural with a determiner or quantity, number + plural, mass
noun with "some" or a container ("a cup of tea"), relative clause ("the man who lives next door",
"the book that I bought"), or a prepositional phrase ("the cup on the table"). Only the kind
(pronoun, name, phrase, mass, bare) reaches the clause shape; the inside varies freely.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qwen_audio.demo import inflect
from qwen_audio.demo import lexicon as lx

PRONOUNS = {  # subject: (object form, person, plural)
    "I": ("me", 1, False), "you": ("you", 2, False), "he": ("him", 3, False),
    "she": ("her", 3, False), "we": ("us", 1, True), "they": ("them", 3, True),
}  # fmt: skip
POSSESSIVES = ("my", "your", "his", "her", "our", "their")
NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty".split()
PLACE_PREPS = ("on", "under", "next to", "behind", "near")
INTENSIFIERS = ("", "", "", "very ", "really ", "quite ", "so ", "too ", "a little ", "a bit ")
CONTAINERS = {"drink": ("a cup of", "a glass of", "a bottle of", "a mug of"),
              "food_mass": ("a bowl of", "a plate of", "a piece of", "a slice of", "a box of")}  # fmt: skip
PERSON_REL = ("lives next door", "works at the bank", "sells flowers", "owns the cafe",
              "teaches music", "drives the bus", "sits next to me", "lives upstairs",
              "runs the bakery", "works with my sister", "called yesterday", "fixed our roof")  # fmt: skip
THING_REL = ("I bought", "you found", "we saw", "they wanted", "she made", "he gave me",
             "my friend left here", "the teacher liked", "you lost", "we ordered")  # fmt: skip

NOUN_CLASSES = {  # class -> (nouns, adjectives that suit them)
    "food": (lx.FOOD, lx.FOOD_ADJ),
    "food_mass": (lx.FOOD_MASS, lx.FOOD_ADJ),
    "drink": (lx.DRINKS, lx.DRINK_ADJ),
    "object": (lx.OBJECTS, lx.THING_ADJ + lx.COLORS),
    "readable": (lx.READABLES, lx.READABLE_ADJ),
    "place": (lx.BUILDINGS + lx.OUTDOORS, lx.PLACE_ADJ),
    "vehicle": (lx.VEHICLES, lx.COLORS + lx.VEHICLE_ADJ),
    "show": (lx.SHOWS, lx.SHOW_ADJ),
    "event": (lx.EVENTS, lx.EVENT_ADJ),
}


@dataclass
class NP:
    text: str
    person: int = 3
    plural: bool = False
    kind: str = "np"  # pron|name|np|mass|bare|there|who: the only part of an NP in the shape
    noun: str = ""  # singular head noun, for "how many ..." / "which ..." questions
    animate: bool = False

    def as_object(self) -> str:
        return (
            PRONOUNS[self.text][0] if self.kind == "pron" and self.text in PRONOUNS else self.text
        )


class Phrases:
    """The noun-phrase half of the grammar; all choices come from ``self.r``."""

    def __init__(self, rng: random.Random):
        self.r = rng

    # --- noun phrases ---------------------------------------------------------------------------
    def person(self, allow_pron: bool = True) -> NP:
        r = self.r
        k = r.choices(("pron", "name", "np"), (35 if allow_pron else 0, 25, 40))[0]
        if k == "pron":
            p = r.choice(tuple(PRONOUNS))
            return NP(p, PRONOUNS[p][1], PRONOUNS[p][2], "pron", animate=True)
        if k == "name":
            return NP(r.choice(lx.NAMES_MALE + lx.NAMES_FEMALE), kind="name", animate=True)
        form = r.choices(("det", "adj", "poss", "plural", "rel", "pp"), (25, 20, 25, 12, 10, 8))[0]
        noun = r.choice(lx.RELATIONS if form == "poss" else lx.PEOPLE)
        if form == "plural":
            det = r.choice(("the", "my", "our", "some", "two", "three", "the two", "all the"))
            return NP(f"{det} {inflect.plural(noun)}", 3, True, noun=noun, animate=True)
        if form == "poss":
            text = f"{self.possessive()} {noun}"
        elif form == "adj":
            text = self.determined(f"{r.choice(lx.PERSON_ATTR_ADJ)} {noun}")
        else:
            text = self.determined(noun, definite=form != "det")
        if form == "rel":
            text += f" who {r.choice(PERSON_REL)}"
        elif form == "pp":
            text += f" with the {r.choice(lx.COLORS)} {r.choice(('hat', 'coat', 'bag', 'scarf', 'bike'))}"  # fmt: skip
        return NP(text, noun=noun, animate=True)

    def animal(self, indefinite: bool = False) -> NP:
        r = self.r
        noun = r.choice(lx.ANIMALS)
        form = r.choice(("adj", "plural") if indefinite else ("det", "adj", "poss", "plural"))
        if form == "plural":
            det = r.choice(("some", "two", "three", "a few") if indefinite else ("the", "some", "two", "three", "our"))  # fmt: skip
            return NP(f"{det} {inflect.plural(noun)}", 3, True, noun=noun, animate=True)
        if form == "poss":
            return NP(f"{self.possessive()} {noun}", noun=noun, animate=True)
        phrase = f"{r.choice(lx.ANIMAL_ADJ)} {noun}" if form == "adj" else noun
        text = inflect.indefinite(phrase) if indefinite else self.determined(phrase)
        return NP(text, noun=noun, animate=True)

    def indefinite_thing(self, cls: str) -> NP:
        """What "there is/are" introduces: "a red cup", "some apples", "three chairs"."""
        r = self.r
        nouns, adjs = NOUN_CLASSES[cls]
        noun, adj = r.choice(nouns), r.choice(adjs)
        form = r.choice(("a", "a_adj", "some", "num"))
        if form in ("a", "a_adj"):
            return NP(inflect.indefinite(f"{adj} {noun}" if form == "a_adj" else noun), noun=noun)
        det = r.choice(NUMBERS) if form == "num" else r.choice(("some", "a few", "many", "lots of"))
        return NP(f"{det} {inflect.plural(noun)}", 3, True, noun=noun)

    def thing(self, cls: str, allow_pron: bool = True) -> NP:
        r = self.r
        nouns, adjs = NOUN_CLASSES[cls]
        noun = r.choice(nouns)
        if cls in ("drink", "food_mass"):  # mass nouns: no "a", no plural
            form = r.choice(("some", "the", "container", "adj", "poss"))
            if form == "container":
                return NP(f"{r.choice(CONTAINERS[cls])} {noun}", kind="mass", noun=noun)
            if form == "adj":
                return NP(f"some {r.choice(adjs)} {noun}", kind="mass", noun=noun)
            det = self.possessive() if form == "poss" else form
            return NP(f"{det} {noun}", kind="mass", noun=noun)
        if allow_pron and r.random() < 0.08:
            return NP("it", kind="pron") if r.random() < 0.6 else NP("they", 3, True, "pron")
        form = r.choices(("det", "adj", "adj2", "poss", "plural", "num", "pp", "rel"),
                         (26, 22, 4, 14, 12, 10, 6, 6))[0]  # fmt: skip
        adj = f"{r.choice(adjs)} " if r.random() < 0.3 else ""
        if form == "plural":
            det = r.choice(("the", "some", "these", "those", "my", "many", "a few", "several", "all the", "lots of"))  # fmt: skip
            return NP(f"{det} {adj}{inflect.plural(noun)}", 3, True, noun=noun)
        if form == "num":
            return NP(f"{r.choice(NUMBERS)} {inflect.plural(noun)}", 3, True, noun=noun)
        if form == "poss":
            return NP(f"{self.possessive()} {adj}{noun}", noun=noun)
        if form in ("adj", "adj2"):
            a1, a2 = r.sample(adjs, 2)
            return NP(self.determined(f"{a1} {noun}" if form == "adj" else f"{a1} {a2} {noun}"), noun=noun)  # fmt: skip
        if form == "pp" and cls not in ("object", "food"):
            form = "det"
        text = self.determined(noun)
        if form == "pp":
            text += f" {self.furniture_place()}"
        elif form == "rel":
            text += f" that {r.choice(THING_REL)}"
        return NP(text, noun=noun)

    def object_of(self, cls: str, allow_pron: bool = True) -> NP:
        r = self.r
        if cls == "person":
            return self.person()
        if cls == "animal":
            return self.animal()
        if cls == "game":
            return NP(r.choice(lx.GAMES), kind="bare")
        if cls == "instrument":
            return NP(f"the {r.choice(lx.INSTRUMENTS)}")
        if cls == "food" and r.random() < 0.35:
            cls = "food_mass"
        return self.thing(cls, allow_pron)

    def possessive(self) -> str:
        if self.r.random() < 0.3:
            name = self.r.choice(lx.NAMES_MALE + lx.NAMES_FEMALE)
            return name + ("'" if name.endswith("s") else "'s")
        return self.r.choice(POSSESSIVES)

    def determined(self, phrase: str, definite: bool = False) -> str:
        dets = ("the", "the", "this", "that") if definite else ("the", "a", "a", "my", "this", "that", "your", "our")  # fmt: skip
        det = self.r.choice(dets)
        return inflect.indefinite(phrase) if det == "a" else f"{det} {phrase}"

    def place(self) -> str:
        """A place with its preposition: "at the library", "in the kitchen", "at home"."""
        r = self.r
        k = r.choices(("building", "in", "at", "room", "home"), (40, 16, 14, 22, 8))[0]
        if k == "home":
            return "at home"
        nouns = {"building": lx.BUILDINGS, "in": lx.OUTDOORS_IN, "at": lx.OUTDOORS_AT, "room": lx.ROOMS}  # fmt: skip
        noun = r.choice(nouns[k])
        adj = f"{r.choice(lx.PLACE_ADJ)} " if r.random() < 0.2 else ""
        preps = {"building": ("at", "near", "outside", "behind", "next to", "in front of"),
                 "in": ("in", "near"), "at": ("at", "near", "by"), "room": ("in",)}[k]  # fmt: skip
        return f"{r.choice(preps)} the {adj}{noun}"

    def furniture_place(self) -> str:
        r = self.r
        if r.random() < 0.25:
            return f"in the {r.choice(lx.STORAGE)}"
        return f"{r.choice(PLACE_PREPS)} the {r.choice(lx.FURNITURE)}"

    def intensified(self, adjs: tuple[str, ...]) -> str:
        return self.r.choice(INTENSIFIERS) + self.r.choice(adjs)
