"""A small English world for the offline text suite: a lexicon, a grammar, and sentences built from it.

Every sentence is generated from a :class:`Clause` (who does what to whom, where, how), so a task can
say exactly how two sentences relate (one entails, contradicts or paraphrases the other) and the
pre-training corpus can use the same words in wordings no task uses. Words are plain English, so a
tokenizer trained elsewhere (all-MiniLM-L6-v2's) reads them too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# nouns by class: the class word is their hypernym ("a dog" entails "an animal")
NOUNS = {
    "animal": ["dog", "cat", "horse", "bird", "fox", "rabbit", "cow", "sheep", "mouse", "bear"],
    "person": ["teacher", "doctor", "farmer", "child", "student", "driver", "singer", "baker", "pilot", "nurse"],
    "thing": ["box", "ball", "book", "cup", "chair", "lamp", "bag", "hat", "coin", "key"],
    "vehicle": ["car", "bus", "truck", "bike", "train", "boat"],
}
PLACES = ["house", "garden", "park", "school", "kitchen", "forest", "market", "station", "river", "field"]
ADJECTIVES = ["red", "blue", "green", "small", "big", "old", "young", "quiet", "heavy", "bright", "dark", "tall"]
# transitive verbs: third person singular → (base, past, synonym, synonym's base); synonyms make paraphrases
VERBS = {"sees": ("see", "saw", "watches", "watch"), "likes": ("like", "liked", "enjoys", "enjoy"),
         "carries": ("carry", "carried", "holds", "hold"), "finds": ("find", "found", "discovers", "discover"),
         "pushes": ("push", "pushed", "moves", "move"), "follows": ("follow", "followed", "chases", "chase"),
         "cleans": ("clean", "cleaned", "washes", "wash"), "buys": ("buy", "bought", "purchases", "purchase")}
INTRANSITIVE = {"sleeps": "is awake", "runs": "stands still", "sings": "is silent", "waits": "leaves",
                "smiles": "frowns", "works": "rests"}
ADVERBS = ["slowly", "quickly", "happily", "quietly", "carefully", "today", "again", "early"]
SYNONYMS = {"big": "large", "small": "little", "quickly": "fast", "happily": "gladly", "quietly": "softly",
            "house": "home", "field": "meadow", "child": "kid", "car": "automobile", "old": "aged",
            "bright": "shiny", "carefully": "cautiously", "market": "shop", "cup": "mug"}
POSITIVE = ["good", "great", "wonderful", "excellent", "lovely", "pleasant", "delightful", "superb"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "boring", "dreadful", "horrible", "dull"]
OPINION_NOUNS = ["film", "meal", "trip", "song", "book", "game", "show", "party", "lesson", "story"]
INTENSIFIERS = ["very", "really", "quite", "truly", "rather"]
NAMES = ["anna", "ben", "clara", "david", "emma", "felix", "grace", "henry", "iris", "jack"]
NUMBERS = ["two", "three", "four", "five", "six", "seven"]
FUNCTION = ["the", "a", "an", "in", "at", "on", "near", "of", "and", "but", "not", "is", "was", "it", "this", "that",
            "who", "what", "where", "does", "did", "do", "which", "there", "by", "to", "with", "?", ".", ",",
            "some", "every", "no", "very", "many", "they", "he", "she", "thing", "place", "someone", "something",
            "thinks", "are", "animals", "persons", "things", "vehicles"]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def all_nouns() -> list[str]:
    return [n for group in NOUNS.values() for n in group]


def hypernym(noun: str) -> str:
    return next(cls for cls, group in NOUNS.items() if noun in group)


@dataclass(frozen=True)
class Clause:
    """``subject verb object [in place] [adverb]``; ``verb`` is a key of :data:`VERBS` or :data:`INTRANSITIVE`."""

    subject: str
    subject_adj: str | None
    verb: str
    obj: str | None
    obj_adj: str | None
    place: str | None
    adverb: str | None

    def words(self, synonyms: bool = False, negated: bool = False) -> list[str]:
        """The clause as words; ``synonyms`` swaps every word that has one (a paraphrase)."""
        def s(w):
            return SYNONYMS.get(w, w) if synonyms and w else w
        out = ["the", *([s(self.subject_adj)] if self.subject_adj else []), s(self.subject)]
        if self.obj is None:
            out += ["does", "not", INTRANSITIVE_BASE[self.verb]] if negated else [self.verb]
        else:
            verb = VERBS[self.verb][2] if synonyms else self.verb
            if negated:
                verb = "not " + VERBS[self.verb][3 if synonyms else 0]
                out += ["does"]
            out += verb.split() + ["the", *([s(self.obj_adj)] if self.obj_adj else []), s(self.obj)]
        if self.place:
            out += ["in", "the", s(self.place)]
        if self.adverb:
            out += [s(self.adverb)]
        return out


INTRANSITIVE_BASE = {"sleeps": "sleep", "runs": "run", "sings": "sing", "waits": "wait", "smiles": "smile",
                     "works": "work"}


def random_clause(rng: np.random.Generator, transitive: bool | None = None, animate: bool = True) -> Clause:
    subjects = NOUNS["animal"] + NOUNS["person"] if animate else all_nouns()
    if transitive is None:
        transitive = rng.random() < 0.7
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    adj = lambda: pick(ADJECTIVES) if rng.random() < 0.6 else None  # noqa: E731
    if transitive:
        verb, obj, obj_adj = pick(list(VERBS)), pick(all_nouns()), adj()
    else:
        verb, obj, obj_adj = pick(list(INTRANSITIVE)), None, None
    return Clause(pick(subjects), adj(), verb, obj, obj_adj, pick(PLACES) if rng.random() < 0.5 else None,
                  pick(ADVERBS) if rng.random() < 0.4 else None)


def sentence(words: list[str]) -> str:
    return " ".join(words + ["."])


def question_about(clause: Clause, slot: str) -> list[str]:
    """A question whose answer is the clause's ``slot``: subject, object or place."""
    base = VERBS[clause.verb][0] if clause.obj else INTRANSITIVE_BASE[clause.verb]
    if slot == "subject":
        rest = [clause.verb] + (["the", clause.obj] if clause.obj else []) + (["in", "the", clause.place]
                                                                               if clause.place else [])
        return ["who", *rest, "?"]
    if slot == "object":
        where = ["in", "the", clause.place] if clause.place else []
        return ["what", "does", "the", clause.subject, base, *where, "?"]
    return ["where", "does", "the", clause.subject, base, *(["the", clause.obj] if clause.obj else []), "?"]


def changed(clause: Clause, rng: np.random.Generator, field: str) -> Clause:
    """The clause with ``field`` replaced by a different value of its kind."""
    pick = lambda xs, old: [x for x in xs if x != old][int(rng.integers(len(xs) - 1))]  # noqa: E731
    if field == "subject":
        return replace(clause, subject=pick(NOUNS["animal"] + NOUNS["person"], clause.subject))
    if field == "verb":
        pool = list(VERBS) if clause.obj else list(INTRANSITIVE)
        return replace(clause, verb=pick(pool, clause.verb))
    if field == "obj" and clause.obj:
        return replace(clause, obj=pick(all_nouns(), clause.obj))
    if field == "place":
        return replace(clause, place=pick(PLACES, clause.place))
    return replace(clause, subject_adj=pick(ADJECTIVES, clause.subject_adj))


def vocabulary() -> list[str]:
    """Every word the generators can write (the tokenizer's vocabulary is learned, this is its check)."""
    words = set(FUNCTION) | set(all_nouns()) | set(NOUNS) | set(PLACES) | set(ADJECTIVES) | set(ADVERBS)
    words |= set(POSITIVE) | set(NEGATIVE) | set(OPINION_NOUNS) | set(INTENSIFIERS) | set(NAMES) | set(NUMBERS)
    words |= set(SYNONYMS.values())
    for verb, forms in VERBS.items():
        words |= {verb, *forms}
    for verb, opposite in INTRANSITIVE.items():
        words |= {verb, INTRANSITIVE_BASE[verb], *opposite.split()}
    return sorted(words)
