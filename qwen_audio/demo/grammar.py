"""A small generative grammar of everyday English sentences, with a *shape* for every clause.

Why a grammar and not templates: issue 7's trial showed that a decoder trained on sentences from a
few shared templates learns the templates, not English. Here a sentence is built clause by clause:
a mood (statement, yes/no question, nine kinds of wh-question, request, suggestion), a tense (eight:
present, past, will, going to, present/past progressive, present perfect, modal), a polarity, one
of ~20 verb frames (transitive with four kinds of object over eleven meaning classes, passive,
intransitive, ditransitive in two orders, motion, placement, to-infinitive, gerund, object +
to-infinitive, that-clause, copula with adjective/place/profession, weather, linking verb,
existential), noun phrases of ~15 structures (pronoun, name, determiners, one or two adjectives,
possessives, numbers, quantities, containers, relative clauses, prepositional phrases), 0-2
adjuncts (time, place, manner, frequency, company, purpose, duration; some fronted), and in a third
of the sentences a second clause (and/but/so, because/when/before/after/if/while/until/although,
fronted or not), over the vocabulary of ``lexicon.py``.

A clause's *shape* is everything structural about it except the words and the inside of its noun
phrases: its role in the sentence, mood, tense, polarity, frame, the kind of subject and object
(pronoun, name or phrase), the adjunct kinds and where they stand, the embedded clause's frame.
``is_heldout_shape`` sets a fixed ~15% of all shapes aside by a stable hash. A held-out sentence has
only held-out clause shapes and a training sentence only training ones (mixed sentences are
dropped), so no clause structure of a held-out sentence occurs anywhere in training.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from qwen_audio.demo import inflect
from qwen_audio.demo import lexicon as lx
from qwen_audio.demo.phrases import NOUN_CLASSES, NP, Phrases

HELDOUT_PER_MILLE = 150
MIN_WORDS, MAX_WORDS = 3, 18

TENSES = ("pres", "past", "fut", "going", "prog", "pastprog", "perf", "modal")
TENSE_WEIGHTS = (20, 26, 12, 7, 10, 5, 10, 10)
MODALS = ("can", "could", "should", "must", "might", "would")
_TIMES = {
    "past": "yesterday|last night|last week|last month|last year|this morning|two days ago|on Monday"
    "|an hour ago|a few minutes ago|on Friday|on Saturday|in January|in the summer|after lunch"
    "|before dinner|after school|after work|at noon|at seven o'clock|at half past six|at night"
    "|the day before yesterday|in the morning|earlier today|a long time ago|last Sunday",
    "future": "tomorrow|tonight|next week|next month|next year|later|soon|this afternoon|at noon"
    "|this evening|on Tuesday|on Thursday|on the weekend|after lunch|before dinner|in December"
    "|at eight o'clock|at a quarter to nine|in the spring|the day after tomorrow|in an hour"
    "|in a few minutes|after school|after work|tomorrow morning|next Saturday",
    "habit": "every day|every morning|every week|every weekend|on Sundays|on weekends|at night"
    "|in the morning|in the evening|after school|after work|every summer|twice a week"
    "|once a month|before breakfast|after dinner|in the winter",
    "now": "now|right now|at the moment|today|this morning|this afternoon|this evening",
    "perf": "already|today|this week|this year|before|twice|many times|recently|this month|lately",
}
TIMES = {k: tuple(v.split("|")) for k, v in _TIMES.items()}
TENSE_TIME = {"pres": "habit", "past": "past", "pastprog": "past", "fut": "future",
              "going": "future", "prog": "now", "perf": "perf", "modal": "future", "-": "future"}  # fmt: skip
NEGATED = {"do": "don't", "does": "doesn't", "did": "didn't", "will": "won't", "is": "isn't",
           "are": "aren't", "was": "wasn't", "were": "weren't", "have": "haven't",
           "has": "hasn't", "can": "can't", "could": "couldn't", "should": "shouldn't",
           "would": "wouldn't", "must": "mustn't"}  # fmt: skip
COMPANY = ("my brother", "my sister", "her friends", "his parents", "the kids", "our neighbors",
           "my mom", "my dad", "a friend", "the team", "their cousins", "my grandmother")  # fmt: skip
DURATIONS = ("for an hour", "for ten minutes", "all day", "for a while", "all night",
             "for two hours", "for a few minutes", "all morning", "for a long time")  # fmt: skip
CONNECTIVES = ("and", "but", "so", "because", "when", "before", "after", "if", "while", "until",
               "although")  # fmt: skip
ACTION = {"trans", "passive", "intrans", "ditrans_io", "ditrans_to", "motion", "put", "to_inf",
          "gerund", "to_inf_obj"}  # fmt: skip


def is_heldout_shape(shape: str) -> bool:
    """A fixed, seed-independent ~15% of all clause shapes (a stable hash, not Python's)."""
    digest = hashlib.sha1(shape.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_PER_MILLE


@dataclass(frozen=True)
class Sentence:
    text: str
    clause_shapes: tuple[str, ...]  # one per clause; the unit of the held-out split

    @property
    def shape(self) -> str:
        return " + ".join(self.clause_shapes)

    @property
    def heldout(self) -> bool | None:
        """True/False when all clauses agree; None for a mixed sentence (used by neither split)."""
        flags = {is_heldout_shape(s) for s in self.clause_shapes}
        return flags.pop() if len(flags) == 1 else None

    @property
    def num_words(self) -> int:
        return len(self.text.split())


@dataclass
class Clause:
    subj: NP
    verb: str  # base form; "be" for copulas
    frame: str
    obj: NP | None = None
    comp: str = ""  # words after the object
    passive: bool = False
    adjuncts: list[tuple[str, str, bool]] = field(default_factory=list)  # (kind, text, fronted)
    tags: list[str] = field(default_factory=list)  # more shape: object kind, embedded frame, ...
    modal: str = "can"


class Grammar(Phrases):
    """Draws sentences from a ``random.Random``; the same seed gives the same sentences."""

    # --- sentences ------------------------------------------------------------------------------
    def sentence(self) -> Sentence:
        while True:
            s = self._sentence()
            if MIN_WORDS <= s.num_words <= MAX_WORDS:
                return s

    def _sentence(self) -> Sentence:
        r = self.r
        kind = r.choices(("single", "pair", "front"), (68, 24, 8))[0]
        if kind == "single":
            text, shape, question = self.main_clause()
            return Sentence(_finish(text, question), (shape,))
        conn = r.choice(CONNECTIVES if kind == "pair" else ("when", "before", "after", "if", "because", "although", "while"))  # fmt: skip
        c1 = self.clause()
        imp_ok = conn in ("when", "before", "after", "if") and c1.frame in ACTION
        mood = "imp" if imp_ok and c1.verb not in lx.STATIVE and r.random() < 0.2 else "decl"
        t1 = "-" if mood == "imp" else _fit_tense(c1, r.choices(TENSES, TENSE_WEIGHTS)[0])
        c2 = self.clause()
        t2 = _fit_tense(c2, _dependent_tense(conn, t1, r))
        c1 = self.with_adjuncts(c1, t1, mood, allow_front=kind == "pair")
        c2 = self.with_adjuncts(c2, t2, "decl", allow_front=False)
        s1 = self.realize(c1, mood, t1, r.random() < 0.12)
        s2 = self.realize(c2, "decl", t2, r.random() < 0.12)
        sh1 = self.shape(c1, "main", mood, t1, s1)
        sh2 = self.shape(c2, f"{kind}:{conn}", "decl", t2, s2)
        if kind == "front":
            text = f"{conn} {s2.text}, {s1.text}"
        elif conn in ("and", "but", "so"):
            text = f"{s1.text}, {conn} {s2.text}"
        else:
            text = f"{s1.text} {conn} {s2.text}"
        return Sentence(_finish(text, False), (sh1, sh2))

    def main_clause(self) -> tuple[str, str, bool]:
        """One clause in any mood: (text, shape, is_question)."""
        r = self.r
        mood = r.choices(("decl", "ynq", "wh", "imp", "lets"), (52, 14, 20, 10, 4))[0]
        c = self.clause()
        if mood in ("imp", "lets") and (c.frame not in ACTION or c.verb in lx.STATIVE):
            mood = "decl"
        if mood in ("imp", "lets"):
            c = self.with_adjuncts(c, "-", mood)
            s = self.realize(c, mood, "-", r.random() < 0.25)
            return s.text, self.shape(c, "main", mood, "-", s), False
        tense = _fit_tense(c, r.choices(TENSES, TENSE_WEIGHTS)[0])
        wh = self.pick_wh(c, tense) if mood == "wh" else ""
        if mood == "wh" and not wh:
            mood = "ynq"
        force = None if wh == "where" and c.frame == "motion" else _WH_NEEDS.get(wh)
        c = self.with_adjuncts(c, tense, mood, force=force, allow_front=mood == "decl")
        s = self.realize(c, mood, tense, r.random() < (0.15 if mood == "decl" else 0.1), wh)
        return s.text, self.shape(c, "main", f"wh_{wh}" if wh else mood, tense, s), mood != "decl"

    def shape(self, c: Clause, role: str, mood: str, tense: str, s: _Realized) -> str:
        adj = sorted(
            f"{k}@{'front' if f else 'end'}" for k, _, f in c.adjuncts if k not in s.dropped
        )
        obj = c.obj.kind if c.obj and "obj" not in s.dropped else "-"
        subj = "who" if "subj" in s.dropped else c.subj.kind
        neg = "neg" if s.neg else "pos"
        return "|".join([role, mood, tense, neg, c.frame, f"s:{subj}", f"o:{obj}", *c.tags, *adj])

    # --- clauses --------------------------------------------------------------------------------
    def clause(self, frame: str | None = None, depth: int = 0) -> Clause:
        c = self._clause(frame or self.r.choices(FRAMES, FRAME_WEIGHTS)[0], depth)
        c.modal = self.r.choice(MODALS)
        return c

    def _clause(self, frame: str, depth: int) -> Clause:
        r = self.r
        subj = self.person()
        if frame == "trans":
            cls = r.choices(tuple(lx.TRANSITIVE), _TRANS_WEIGHTS)[0]
            verb = r.choice(lx.TRANSITIVE[cls])
            if verb in _ANIMAL_TRANSITIVE and cls in ("food", "drink") and r.random() < 0.3:
                subj = self.animal()  # "the dog ate the cake"
            c = Clause(subj, verb, "trans", obj=self.object_of(cls))
            c.tags.append(f"obj:{_OBJ_GROUP[cls]}")
            return c
        if frame == "passive":
            cls = r.choice(("food", "object", "readable", "vehicle"))
            c = Clause(self.thing(cls, allow_pron=False), r.choice(lx.TRANSITIVE[cls]), "passive", passive=True)  # fmt: skip
            if r.random() < 0.5:
                c.comp = f"by {self.person(allow_pron=False).text}"
                c.tags.append("agent")
            return c
        if frame == "intrans":
            if r.random() < 0.2:
                return Clause(self.animal(), r.choice(lx.ANIMAL_INTRANSITIVE), "intrans")
            return Clause(subj, r.choice(lx.INTRANSITIVE), "intrans")
        if frame == "ditrans":
            verb = r.choice(lx.DITRANSITIVE)
            theme = self.object_of(r.choice(("object", "food", "readable")), allow_pron=False)
            rec = self.person()
            if verb != "buy" and r.random() < 0.5:
                return Clause(subj, verb, "ditrans_io", obj=rec, comp=theme.text)
            prep = "for" if verb == "buy" else "to"
            return Clause(subj, verb, "ditrans_to", obj=theme, comp=f"{prep} {rec.as_object()}")
        if frame == "motion":
            verb = r.choice(lx.MOTION)
            on_foot = verb in ("go", "walk", "run", "hurry", "come", "return", "move", "rush")
            places = (lx.BUILDINGS, lx.OUTDOORS) + ((lx.ROOMS,) if on_foot else ())
            goal = "home" if r.random() < 0.12 else f"to the {r.choice(r.choice(places))}"
            return Clause(subj, verb, "motion", comp=goal)
        if frame == "put":
            obj = self.object_of("object")
            return Clause(subj, r.choice(lx.PUT), "put", obj=obj, comp=self.furniture_place())
        if frame in ("to_inf", "gerund", "to_inf_obj") and depth == 0:
            inner = self.clause(r.choice(("trans", "trans", "intrans", "motion", "put")), depth + 1)
            rest = " ".join(
                w for w in (inner.obj.as_object() if inner.obj else "", inner.comp) if w
            )
            if frame == "gerund":
                vp = f"{inflect.present_participle(inner.verb)} {rest}".strip()
                c = Clause(subj, r.choice(lx.GERUND), "gerund", comp=vp)
            elif frame == "to_inf":
                c = Clause(subj, r.choice(lx.TO_INFINITIVE), "to_inf", comp=f"to {inner.verb} {rest}".strip())  # fmt: skip
            else:
                c = Clause(subj, r.choice(_OBJ_CONTROL), "to_inf_obj", obj=self.person(), comp=f"to {inner.verb} {rest}".strip())  # fmt: skip
            c.tags.append(f"vp:{inner.frame}")
            return c
        if frame == "that" and depth == 0:
            inner = self.clause(r.choice(("trans", "intrans", "motion", "cop_adj", "cop_loc")), depth + 1)  # fmt: skip
            tense = _fit_tense(inner, r.choices(TENSES, TENSE_WEIGHTS)[0])
            s = self.realize(inner, "decl", tense, r.random() < 0.15)
            that = "that " if r.random() < 0.5 else ""
            c = Clause(subj, r.choice(lx.THAT_CLAUSE), "that", comp=that + s.text)
            c.tags.append(f"inner:{inner.frame}/{tense}/{'neg' if s.neg else 'pos'}")
            return c
        if frame == "cop_adj":
            if r.random() < 0.5:
                return Clause(subj, "be", "cop_adj", comp=self.intensified(lx.PERSON_ADJ))
            cls = r.choice(("object", "food", "vehicle", "readable"))
            thing = self.thing(cls)
            return Clause(thing, "be", "cop_adj_thing", comp=self.intensified(NOUN_CLASSES[cls][1]))  # fmt: skip
        if frame == "cop_loc":
            if r.random() < 0.5:
                return Clause(subj, "be", "cop_loc", comp=self.place())
            thing = self.thing("object", allow_pron=False)
            return Clause(thing, "be", "cop_loc_thing", comp=self.furniture_place())
        if frame == "cop_nom":
            noun = r.choice(lx.PROFESSIONS)
            return Clause(subj, "be", "cop_nom", comp=inflect.plural(noun) if subj.plural else inflect.indefinite(noun))  # fmt: skip
        if frame == "weather":
            return Clause(NP("it", kind="pron"), "be", "weather", comp=self.intensified(lx.WEATHER_ADJ))  # fmt: skip
        if frame == "link":
            return Clause(subj, r.choice(lx.LINKING), "link", comp=self.intensified(lx.PERSON_ADJ))
        if frame == "exist":
            cls = r.choice(("object", "food", "animal"))
            np = self.animal(indefinite=True) if cls == "animal" else self.indefinite_thing(cls)
            where = self.place() if r.random() < 0.4 else self.furniture_place()
            return Clause(NP("there", 3, np.plural, "there"), "be", "exist", comp=f"{np.text} {where}")  # fmt: skip
        return self._clause("trans", depth)  # an embedded frame asked for at depth > 0

    def with_adjuncts(
        self,
        c: Clause,
        tense: str,
        mood: str,
        force: str | None = None,
        allow_front: bool = True,
    ) -> Clause:
        r = self.r
        allowed = ["time"]
        action = c.frame in ACTION
        if action and c.frame not in ("motion", "put"):
            allowed.append("place")
        stative = c.verb in lx.STATIVE
        if action and c.frame != "passive" and not stative:
            allowed.append("manner")
        if tense in ("pres", "past") and mood in ("decl", "ynq", "wh"):
            allowed.append("freq")
        if action and c.subj.animate and c.frame != "passive" and not stative:
            allowed.append("with")
        if c.frame == "motion":
            allowed.append("purpose")
        if c.frame in ("intrans", "motion", "gerund") or tense in ("prog", "pastprog", "perf"):
            allowed.append("duration")
        n = r.choices((0, 1, 2), (40, 42, 18))[0]
        if c.frame == "that":  # an end adjunct would read as part of the inner clause
            allowed, n = ["time"], (1 if allow_front and r.random() < 0.3 else 0)
            allow_front = True
        kinds = r.sample(allowed, min(n, len(allowed)))
        if force and force not in kinds:
            kinds = [force, *kinds[:1]]
        order = ("freq", "manner", "place", "with", "duration", "time", "purpose")
        for kind in sorted(kinds, key=order.index):
            c.adjuncts.append((kind, self.adjunct(kind, tense), False))
        front_p = 1.0 if c.frame == "that" else 0.3
        if allow_front and c.adjuncts and c.adjuncts[-1][0] == "time" and r.random() < front_p:
            kind, text, _ = c.adjuncts.pop()
            c.adjuncts.insert(0, (kind, text, True))
        return c

    def adjunct(self, kind: str, tense: str) -> str:
        r = self.r
        if kind == "time":
            return r.choice(TIMES[TENSE_TIME[tense]])
        if kind == "place":
            return self.place()
        if kind == "manner":
            return r.choice(lx.MANNER_ADV)
        if kind == "freq":
            return r.choice(lx.FREQUENCY_ADV)
        if kind == "with":
            return f"with {r.choice(COMPANY) if r.random() < 0.6 else r.choice(lx.NAMES_MALE + lx.NAMES_FEMALE)}"  # fmt: skip
        if kind == "purpose":
            inner = self.clause("trans", depth=1)
            return f"to {inner.verb} {inner.obj.as_object()}"
        return r.choice(DURATIONS)

    def pick_wh(self, c: Clause, tense: str) -> str:
        options = ["why"]
        if c.subj.animate and not c.passive and c.frame != "cop_nom":
            options += ["subj", "subj"]
        if c.obj is not None and c.frame in ("trans", "ditrans_to", "put"):
            options += ["obj", "obj"]
            if c.obj.kind == "np" and c.obj.noun:  # count nouns only ("mass" is not "np")
                options.append("how_many" if c.obj.plural else "which")
        if c.frame == "motion":
            options += ["where", "where"]
        if c.frame in ACTION:
            options += ["how", "when"] + (["where"] if c.frame != "put" else [])
        if tense == "pres":
            options.append("how_often")
        return self.r.choice(options)

    # --- realisation ----------------------------------------------------------------------------
    def verb_group(self, c: Clause, subj: NP, tense: str, do_support: bool) -> tuple[str, str]:
        """(auxiliary, rest). The auxiliary moves before the subject in questions; '' if none."""
        third_sg = subj.person == 3 and not subj.plural
        be_pres = "am" if (subj.person == 1 and not subj.plural) else ("is" if third_sg else "are")
        be_past = "was" if (not subj.plural and subj.person != 2) else "were"
        have = "has" if third_sg else "have"
        v = c.verb
        if c.passive:
            pp = inflect.past_participle(v)
            table = {"pres": (be_pres, pp), "past": (be_past, pp), "fut": ("will", f"be {pp}"),
                     "going": (be_pres, f"going to be {pp}"), "prog": (be_pres, f"being {pp}"),
                     "pastprog": (be_past, f"being {pp}"), "perf": (have, f"been {pp}")}  # fmt: skip
            return table.get(tense) or (c.modal, f"be {pp}")
        if v == "be":
            table = {"pres": (be_pres, ""), "past": (be_past, ""), "fut": ("will", "be"),
                     "going": (be_pres, "going to be"), "prog": (be_pres, ""),
                     "pastprog": (be_past, ""), "perf": (have, "been")}  # fmt: skip
            return table.get(tense) or (c.modal, "be")
        if tense in ("pres", "past"):
            if do_support:
                return ("does" if third_sg else "do") if tense == "pres" else "did", v
            return "", (
                inflect.third_person(v) if third_sg else v
            ) if tense == "pres" else inflect.past(v)
        table = {"fut": ("will", v), "going": (be_pres, f"going to {v}"),
                 "prog": (be_pres, inflect.present_participle(v)),
                 "pastprog": (be_past, inflect.present_participle(v)),
                 "perf": (have, inflect.past_participle(v))}  # fmt: skip
        return table.get(tense) or (c.modal, v)

    def realize(self, c: Clause, mood: str, tense: str, neg: bool, wh: str = "") -> _Realized:
        r = self.r
        dropped: set[str] = set()
        wh_word = ""
        obj = c.obj.as_object() if c.obj else ""
        adjuncts = list(c.adjuncts)
        if wh in ("obj", "how_many", "which"):
            noun = c.obj.noun
            wh_word = {"obj": "who" if c.obj.animate else "what", "how_many": f"how many {inflect.plural(noun)}", "which": f"which {noun}"}[wh]  # fmt: skip
            obj, dropped = "", {"obj"}
        elif wh in _WH_NEEDS:
            need = _WH_NEEDS[wh]
            if wh == "where" and c.frame == "motion":
                c = Clause(**{**c.__dict__, "comp": ""})
            else:
                adjuncts = [a for a in adjuncts if a[0] != need]
            wh_word = {"where": "where", "when": "when", "how": "how", "how_often": "how often"}[wh]
            dropped = {need}
        elif wh == "why":
            wh_word = "why"
        front = [t + "," for k, t, f in adjuncts if f]
        mid = [t for k, t, f in adjuncts if k == "freq"]
        if neg:  # no double negatives: "isn't never" -> "isn't always"
            mid = [r.choice(("always", "usually", "often")) if t in ("never", "rarely") else t for t in mid]  # fmt: skip
        tail = " ".join(w for w in (obj, c.comp, *(t for k, t, f in adjuncts if not f and k != "freq")) if w)  # fmt: skip
        if mood in ("imp", "lets"):
            if mood == "lets":
                head = "let's not" if neg else "let's"
            else:
                head = ("do not" if r.random() < 0.3 else "don't") if neg else ("please" if r.random() < 0.3 else "")  # fmt: skip
            return _Realized(" ".join(w for w in (*front, head, *mid, c.verb, tail) if w), neg, dropped)  # fmt: skip
        subj = c.subj
        if wh == "subj":  # "Who broke the window?": the subject is asked for, no inversion
            subj, dropped, wh_word = NP("who", 3, False, "who"), {"subj"}, ""
        question = mood in ("ynq", "wh") and wh != "subj"
        aux, rest = self.verb_group(c, subj, tense, do_support=question or neg)
        if neg and question and aux not in NEGATED:
            neg = False  # no "amn't I?" or "mightn't she?" in everyday speech
        if neg:
            if question or (aux in NEGATED and r.random() < 0.5):
                aux = NEGATED[aux]
            else:
                aux = "cannot" if aux == "can" else f"{aux} not"
        subj_text = subj.text
        if question:
            words = [wh_word, aux, subj_text, *mid, rest, tail]
        else:
            if aux and not neg and subj.kind == "pron" and r.random() < 0.25:
                subj_text, aux = _contract(subj_text, aux)
            words = [*front, subj_text, aux, *mid, rest, tail]
        return _Realized(" ".join(w for w in words if w), neg, dropped)


@dataclass
class _Realized:
    text: str
    neg: bool
    dropped: set[str]


def _contract(subj: str, aux: str) -> tuple[str, str]:
    short = {"am": "'m", "is": "'s", "are": "'re", "will": "'ll", "have": "'ve", "would": "'d"}
    if aux in short:  # the auxiliary already agrees with the subject
        return subj + short[aux], ""
    return subj, aux


def _fit_tense(c: Clause, tense: str) -> str:
    """No progressive for verbs of state: "we were liking" -> "we liked"."""
    if c.verb in lx.STATIVE and tense in ("prog", "pastprog"):
        return "pres" if tense == "prog" else "past"
    return tense


def _dependent_tense(conn: str, main: str, r: random.Random) -> str:
    if conn in ("and", "but", "so", "because", "although"):
        return r.choices(TENSES, TENSE_WEIGHTS)[0]
    if conn == "while":
        return "pastprog" if main in ("past", "pastprog") else "prog"
    if main in ("past", "pastprog"):
        return "past" if conn != "after" or r.random() < 0.7 else "pastprog"
    return "pres" if r.random() < 0.8 or conn == "if" else "perf"


def _finish(text: str, question: bool) -> str:
    text = text.replace(" ,", ",")
    text = text[0].upper() + text[1:]
    return text + ("?" if question else ".")


_OBJ_GROUP = {"food": "thing", "drink": "thing", "object": "thing", "readable": "thing",
              "person": "person", "animal": "animal", "place": "thing", "vehicle": "thing",
              "show": "thing", "game": "bare", "instrument": "thing", "event": "thing"}  # fmt: skip
_ANIMAL_TRANSITIVE = {"eat", "drink", "find", "like", "love", "want", "hate", "grab", "hide",
                      "drop", "spill", "share", "taste", "finish"}  # fmt: skip
_OBJ_CONTROL = ("want", "ask", "tell", "help", "invite", "remind", "teach", "need", "expect")
_TRANS_WEIGHTS = tuple(len(v) for v in lx.TRANSITIVE.values())
_WH_NEEDS = {"where": "place", "when": "time", "how": "manner", "how_often": "freq"}
FRAMES = ("trans", "passive", "intrans", "ditrans", "motion", "put", "to_inf", "gerund",
          "to_inf_obj", "that", "cop_adj", "cop_loc", "cop_nom", "weather", "link", "exist")  # fmt: skip
FRAME_WEIGHTS = (30, 4, 8, 6, 8, 4, 6, 4, 3, 4, 6, 4, 3, 2, 3, 4)
