"""Sentences for the synthetic English->German corpus: grammar, translation, reference noise.

An English sentence is drawn from a small seeded grammar as a :class:`Sentence`
structure and rendered twice into German:

* the *canonical* translation is a pure function of the structure: the regular
  output a well-trained MT system converges to (what sequence-level KD distils);
* the *reference* is the canonical translation with human variability drawn at
  every choice point (synonyms, particles, word order, Praeteritum for Perfekt...).

The German rules cover what makes the pair worth learning: V2 and verb-final
order, Perfekt with haben/sein, werden-future, case, gender and adjective
declension, strong present stems (sieht, isst, schlaeft), nicht/kein.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, NamedTuple, Sequence, TypeVar

from kdst.synth.vocab import ADJECTIVES, Adjective, GermanVerb, NOUNS, Noun, TIMES, VERBS

T = TypeVar("T")
TENSES = ("present", "past", "future")
SUBORDINATORS = ("because", "although", "when")
COORDINATORS = ("and", "but")
# Draws before giving up on an unseen English sentence; the grammar has far more
# sentences than any corpus asks for, so this only bounds pathological calls.
_MAX_TRIES = 50

@dataclass(frozen=True)
class NP:
    """A noun phrase. ``det`` is the/a/my/this; "a" with a plural or mass noun means no article."""

    noun: str
    plural: bool = False
    det: str = "the"
    adj: str | None = None


@dataclass(frozen=True)
class Clause:
    """``verb`` is a key of VERBS or "be" (then ``pred`` is the predicate adjective)."""

    subject: NP
    verb: str
    obj: NP | None = None
    tense: str = "present"
    negated: bool = False
    pred: str | None = None


@dataclass(frozen=True)
class Sentence:
    main: Clause
    time: str | None = None  # a key of TIMES, matching the main clause's tense
    time_first: bool = False  # sentence-initial in English, else after the main clause
    link: str | None = None  # a subordinator or coordinator joining ``second``
    second: Clause | None = None
    second_first: bool = False  # a subordinate clause spoken before the main clause


@dataclass(frozen=True)
class SentencePair:
    en: str  # transcript (what is spoken)
    de: str  # reference translation (with human variability)
    de_canonical: str  # the regular translation


# ---------------------------------------------------------------------------- English


def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _en_np(np_: NP) -> str:
    noun = NOUNS[np_.noun]
    words = [ADJECTIVES[np_.adj].en] if np_.adj else []
    words.append(noun.en_pl if np_.plural else noun.en)
    if np_.det == "a":
        det = "" if (np_.plural or noun.mass) else _an(words[0])
    elif np_.det == "this":
        det = "these" if np_.plural else "this"
    else:
        det = np_.det
    return " ".join([det, *words] if det else words)


def _en_clause(c: Clause) -> str:
    singular = not c.subject.plural
    neg = " not" if c.negated else ""
    if c.verb == "be":
        be = {"present": "is" if singular else "are", "past": "was" if singular else "were",
              "future": "will"}[c.tense]
        vp = f"{be}{neg} be" if c.tense == "future" else f"{be}{neg}"
        vp += " " + ADJECTIVES[c.pred].en
    else:
        verb = VERBS[c.verb]
        if c.tense == "future":
            vp = f"will{neg} {verb.en}"
        elif c.negated:
            aux = "did" if c.tense == "past" else ("does" if singular else "do")
            vp = f"{aux} not {verb.en}"
        elif c.tense == "past":
            vp = verb.en_past
        else:
            vp = verb.en_3sg if singular else verb.en
        if c.obj:
            vp += " " + _en_np(c.obj)
    return f"{_en_np(c.subject)} {vp}"


def _finish(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def render_en(s: Sentence) -> str:
    main = _en_clause(s.main)
    if s.time and not s.time_first:
        main += " " + TIMES[s.time].en
    if s.time and s.time_first:
        main = TIMES[s.time].en + " " + main
    if s.second is None:
        return _finish(main)
    second = _en_clause(s.second)
    if s.link in COORDINATORS:
        return _finish(main + (", but " if s.link == "but" else " and ") + second)
    sub = f"{s.link} {second}"
    return _finish(f"{sub}, {main}" if s.second_first else f"{main} {sub}")


# ---------------------------------------------------------------------------- German

_GENDER = {"m": 0, "f": 1, "n": 2}
# Articles per (kind, case): (masculine, feminine, neuter, plural).
_ARTICLES = {
    ("def", "nom"): ("der", "die", "das", "die"), ("def", "acc"): ("den", "die", "das", "die"),
    ("dies", "nom"): ("dieser", "diese", "dieses", "diese"),
    ("dies", "acc"): ("diesen", "diese", "dieses", "diese"),
    ("ein", "nom"): ("ein", "eine", "ein", ""), ("ein", "acc"): ("einen", "eine", "ein", ""),
    ("kein", "nom"): ("kein", "keine", "kein", "keine"), ("kein", "acc"): ("keinen", "keine", "kein", "keine"),
    ("mein", "nom"): ("mein", "meine", "mein", "meine"), ("mein", "acc"): ("meinen", "meine", "mein", "meine"),
    ("none", "nom"): ("", "", "", ""), ("none", "acc"): ("", "", "", ""),
}
# Adjective endings per (declension, case): weak after der/dies-, mixed after
# ein/kein/mein, strong without an article (indefinite plural, mass nouns).
_ENDINGS = {
    ("weak", "nom"): ("e", "e", "e", "en"), ("weak", "acc"): ("en", "e", "e", "en"),
    ("mixed", "nom"): ("er", "e", "es", "en"), ("mixed", "acc"): ("en", "e", "es", "en"),
    ("strong", "nom"): ("er", "e", "es", "e"), ("strong", "acc"): ("en", "e", "es", "e"),
}
_DECLENSION = {"def": "weak", "dies": "weak", "ein": "mixed", "kein": "mixed", "mein": "mixed", "none": "strong"}
_AUX = {"h": ("hat", "haben"), "s": ("ist", "sind")}
_EAT_ANIMAL = GermanVerb("fressen", "frisst", "gefressen", "h", "fraß")


class _Vary:
    """The reference's random choices; with no rng every choice is the canonical one."""

    def __init__(self, rng: random.Random | None, p: float):
        self.rng = rng if p > 0 else None
        self.p = p

    def flip(self, scale: float = 1.0) -> bool:
        return self.rng is not None and self.rng.random() < self.p * scale

    def pick(self, options: Sequence[T]) -> T:
        return options[0] if self.rng is None else self.rng.choice(options)


def _maybe_syn(word: T, syn: T | None, vary: _Vary) -> T:
    return syn if syn is not None and vary.flip() else word


def _article_kind(np_: NP, noun: Noun, negated_indefinite: bool) -> str:
    kind = {"the": "def", "this": "dies", "my": "mein", "a": "ein"}[np_.det]
    if kind == "ein" and (np_.plural or noun.mass):
        kind = "none"
    if negated_indefinite and kind in ("ein", "none"):
        kind = "kein"
    return kind


def _is_kein(np_: NP | None, negated: bool) -> bool:
    return negated and np_ is not None and np_.det == "a"


def _de_np(np_: NP, case: str, vary: _Vary, kein: bool = False) -> str:
    noun = NOUNS[np_.noun]
    de = _maybe_syn(noun.de, noun.de_syn, vary)
    kind = _article_kind(np_, noun, kein)
    slot = 3 if np_.plural else _GENDER[de.gender]
    words = [_ARTICLES[kind, case][slot]]
    if np_.adj:
        adj = ADJECTIVES[np_.adj]
        if adj.gradable and vary.flip(0.5):
            words.append("sehr")
        words.append(_adj_stem(adj, vary) + _ENDINGS[_DECLENSION[kind], case][slot])
    if np_.plural:
        words.append(de.plural)
    else:
        words.append(de.acc if case == "acc" else de.lemma)
    return " ".join(w for w in words if w)


def _adj_stem(adj: Adjective, vary: _Vary) -> str:
    word = _maybe_syn(adj.de, adj.de_syn, vary)
    if word == adj.de and adj.de_stem:
        return adj.de_stem
    return word[:-1] if word.endswith("e") else word


class _DeClause(NamedTuple):
    subject: str
    finite: str
    middle: list[str]  # between the finite verb and the right bracket, subject excluded
    right: list[str]  # participle / infinitive


class _Tenses(NamedTuple):
    praeteritum: bool  # simple past instead of the canonical Perfekt
    present_for_future: bool  # "Morgen kommt er" instead of "Morgen wird er kommen"


def _german_verb(c: Clause, vary: _Vary) -> GermanVerb:
    verb = VERBS[c.verb]
    # Animals fressen: a rule of the language, so it is canonical, not variation.
    if c.verb == "eat" and "animal" in NOUNS[c.subject.noun].tags:
        return _EAT_ANIMAL
    return _maybe_syn(verb.de, verb.de_syn, vary)


def _de_clause(c: Clause, time: str | None, tenses: _Tenses, vary: _Vary,
               subordinate: bool = False) -> _DeClause:
    plural = c.subject.plural
    subject = _de_np(c.subject, "nom", vary)
    right: list[str] = []
    if c.verb == "be":
        if c.tense == "future":
            finite, right = ("werden" if plural else "wird"), ["sein"]
        else:
            finite = {"present": ("ist", "sind"), "past": ("war", "waren")}[c.tense][plural]
    else:
        v = _german_verb(c, vary)
        if c.tense == "present" or (c.tense == "future" and tenses.present_for_future):
            finite = v.inf if plural else v.pres3sg
        elif c.tense == "future":
            finite, right = ("werden" if plural else "wird"), [v.inf]
        elif tenses.praeteritum:
            finite = v.past3pl if plural else v.past3sg
        else:
            finite, right = _AUX[v.aux][plural], [v.participle]

    middle: list[str] = []
    # "ja" is a main-clause particle; "schon" (already) clashes with a negation.
    particles = ["auch"] + ([] if subordinate else ["ja"]) + (["schon"] if c.tense == "past" and not c.negated else [])
    if vary.flip(0.5):
        middle.append(vary.pick(particles))
    kein = _is_kein(c.obj, c.negated)
    obj = _de_np(c.obj, "acc", vary, kein=kein) if c.obj else None
    definite_obj = obj is not None and not kein and c.obj.det != "a"
    # The time adverb usually precedes the object; after a definite object is as good.
    time_after_obj = time is not None and definite_obj and vary.flip(0.5)
    if time and not time_after_obj:
        middle.append(time)
    really = c.negated and vary.flip(0.5)
    if really and kein:
        middle.append("wirklich")
    if obj:
        middle.append(obj)
    if time_after_obj:
        middle.append(time)
    if c.negated and not kein:
        middle += ["wirklich", "nicht"] if really else ["nicht"]
    if c.pred:
        adj = ADJECTIVES[c.pred]
        if adj.gradable and not c.negated and vary.flip(0.5):
            middle.append("sehr")
        middle.append(_maybe_syn(adj.de, adj.de_syn, vary))
    return _DeClause(subject, finite, middle, right)


def _main_clause(c: _DeClause, prefield: str | None) -> str:
    if prefield is None:
        return " ".join([c.subject, c.finite, *c.middle, *c.right])
    return " ".join([prefield, c.finite, c.subject, *c.middle, *c.right])


def _sub_clause(conj: str, c: _DeClause) -> str:
    return " ".join([conj, c.subject, *c.middle, *c.right, c.finite])


def _subordinator(link: str, tense: str, vary: _Vary) -> str:
    if link == "when":  # a single past event takes "als", anything else "wenn"
        return "als" if tense == "past" else "wenn"
    word, syn = {"because": ("weil", "da"), "although": ("obwohl", "obgleich")}[link]
    return _maybe_syn(word, syn, vary)


def render_de(s: Sentence, rng: random.Random | None = None, variability: float = 0.3) -> str:
    """The German translation: canonical without ``rng``, a varied reference with it."""
    vary = _Vary(rng, variability)
    tenses = _Tenses(praeteritum=s.main.tense == "past" and vary.flip(),
                     present_for_future=s.time is not None and s.main.tense == "future" and vary.flip())
    time = None
    if s.time:
        entry = TIMES[s.time]
        time = _maybe_syn(entry.de, entry.de_syn, vary)
    subordinate = s.link in SUBORDINATORS
    sub_first = s.second_first
    if subordinate and vary.flip():
        sub_first = not sub_first
    time_first = s.time_first
    if time and vary.flip():
        time_first = not time_first
    time_first = time_first and not sub_first  # the prefield holds one constituent

    main = _de_clause(s.main, None if time_first else time, tenses, vary)
    prefield = time if time_first else None
    if s.second is None:
        text = _main_clause(main, prefield)
    elif subordinate:
        conj = _subordinator(s.link, s.second.tense, vary)
        sub = _sub_clause(conj, _de_clause(s.second, None, tenses, vary, subordinate=True))
        text = _main_clause(main, sub + ",") if sub_first else _main_clause(main, prefield) + ", " + sub
    else:
        if s.link == "but":
            joiner = ", " + _maybe_syn("aber", "doch", vary) + " "
        else:
            joiner = ", und " if vary.flip(0.5) else " und "
        text = _main_clause(main, prefield) + joiner + _main_clause(_de_clause(s.second, None, tenses, vary), None)
    return _finish(text)


# ---------------------------------------------------------------------------- grammar


@lru_cache(maxsize=None)
def _nouns_with(tags: frozenset[str]) -> tuple[str, ...]:
    return tuple(key for key, noun in NOUNS.items() if noun.tags & tags)


@lru_cache(maxsize=None)
def _adjectives_for(noun: str) -> tuple[str, ...]:
    tags = NOUNS[noun].tags
    return tuple(key for key, adj in ADJECTIVES.items() if adj.tags & tags)


def _random_np(rng: random.Random, noun: str, exclude_adj: str | None = None) -> NP:
    entry = NOUNS[noun]
    plural = entry.can_plural and rng.random() < 0.35
    det = rng.choices(("the", "a", "my", "this"), weights=(45, 25, 15, 15))[0]
    adjectives = [a for a in _adjectives_for(noun) if a != exclude_adj]
    adj = rng.choice(adjectives) if adjectives and rng.random() < 0.3 else None
    return NP(noun, plural, det, adj)


def _random_clause(rng: random.Random, tense: str) -> Clause:
    negated = rng.random() < 0.25
    if rng.random() < 0.12:
        noun = rng.choice([n for n in NOUNS if _adjectives_for(n)])
        pred = rng.choice(_adjectives_for(noun))
        return Clause(_random_np(rng, noun, exclude_adj=pred), "be", None, tense, negated, pred)
    key = rng.choice(sorted(VERBS))
    verb = VERBS[key]
    subject = rng.choice(_nouns_with(verb.subj))
    obj = None
    if verb.obj and not (verb.obj_optional and rng.random() < 0.3):
        choices = [n for n in _nouns_with(verb.obj) if n != subject]
        obj = _random_np(rng, rng.choice(choices))
    return Clause(_random_np(rng, subject), key, obj, tense, negated)


def random_sentence(rng: random.Random) -> Sentence:
    tense = rng.choice(TENSES)
    main = _random_clause(rng, tense)
    link = second = None
    second_first = False
    shape = rng.random()
    if shape < 0.3:
        link = rng.choice(SUBORDINATORS)
        # English (and German) use the present after "when" for a future event.
        second = _random_clause(rng, "present" if link == "when" and tense == "future" else tense)
        second_first = rng.random() < 0.35
    elif shape < 0.5:
        link = rng.choice(COORDINATORS)
        second = _random_clause(rng, tense)
    time, time_first = None, False
    if rng.random() < 0.35:
        time = rng.choice(sorted(k for k, t in TIMES.items() if t.tense == tense))
        time_first = not second_first and rng.random() < 0.6
    return Sentence(main, time, time_first, link, second, second_first)


def _derived_rng(*parts: object) -> random.Random:
    # A str seed is hashed with SHA-512: stable across runs, unlike hash().
    return random.Random("/".join(str(p) for p in parts))


def generate_pairs(n: int, seed: int, variability: float = 0.3,
                   exclude: Iterable[str] = ()) -> list[SentencePair]:
    """``n`` sentence pairs, deterministic per seed; English sentences are unique
    within the call and avoid ``exclude`` (e.g. the train side when drawing a test set).

    The English and canonical sides do not depend on ``variability``.
    """
    rng = _derived_rng("kdst-mini-text", seed)
    seen = set(exclude)
    pairs = []
    for index in range(n):
        for _ in range(_MAX_TRIES):
            sentence = random_sentence(rng)
            en = render_en(sentence)
            if en not in seen:
                break
        seen.add(en)
        reference = render_de(sentence, _derived_rng("kdst-mini-ref", seed, index), variability)
        pairs.append(SentencePair(en, reference, render_de(sentence)))
    return pairs
