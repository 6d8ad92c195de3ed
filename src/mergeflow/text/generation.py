"""The generated tasks of the offline generation suite: a prompt, and an answer of a few words.

Each task asks a small causal language model for an answer it must write, scored by exact match of the
words greedy decoding produces (:func:`mergeflow.text.metrics.exact_match`): look a fact up in a list
given in the prompt, add or subtract small numbers, reverse a list of words, sort a list of digits,
translate a noun phrase word by word into a made-up language (the adjective after the noun), and name an
opinion's polarity. Generation is deterministic in (seed, task, split). The words are those of
:mod:`mergeflow.text.language` plus the digits, the made-up lexicon and each task's prompt words
(:func:`vocabulary`): the pre-training corpus uses the language's words, never a task's prompt.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from mergeflow.text import language as L

Example = tuple[str, str]  # (prompt, answer)

DIGITS = [str(i) for i in range(19)]  # the sums of two digits reach 18
# the made-up language: every noun and adjective of the language has one word, a noun phrase is translated
# word by word with the adjective after the noun (as French or Spanish put it)
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "bo", "ga"]
_TRANSLATED = sorted({*L.all_nouns(), *L.ADJECTIVES})


def _lexicon() -> dict[str, str]:
    """English word → its made-up translation: two syllables, distinct, fixed (not drawn from a seed)."""
    words = [a + b for a in _SYLLABLES for b in _SYLLABLES if a != b]
    rng = np.random.default_rng(zlib.crc32(b"lexicon"))
    chosen = rng.permutation(len(words))[:len(_TRANSLATED)]
    return {w: words[int(i)] for w, i in zip(_TRANSLATED, chosen, strict=True)}


LEXICON = _lexicon()


def _pick(rng, xs):
    return xs[int(rng.integers(len(xs)))]


def _distinct(rng, xs, n: int) -> list:
    return [xs[int(i)] for i in rng.permutation(len(xs))[:n]]


def _owners(rng, n: int) -> tuple[list[str], list[str], str]:
    """``n`` distinct people, ``n`` distinct things, and the facts ``<name> has the <thing> .`` in one string."""
    names, things = _distinct(rng, L.NAMES, n), _distinct(rng, L.NOUNS["thing"] + L.NOUNS["animal"], n)
    return names, things, " ".join(f"{p} has the {t} ." for p, t in zip(names, things, strict=True))


def lookup(rng) -> Example:
    """A list of three or four facts ``<name> has the <thing>``; the question repeats one fact's start (what
    the answer copies from the list, not from any knowledge the model has)."""
    names, things, facts = _owners(rng, int(rng.integers(3, 5)))
    asked = int(rng.integers(len(names)))
    return f"facts : {facts} question : {names[asked]} has the", things[asked]


def arithmetic(rng) -> Example:
    """The sum of two digits, or the difference of two (never below zero)."""
    a, b = int(rng.integers(10)), int(rng.integers(10))
    if rng.random() < 0.5:
        return f"compute : {a} + {b} =", str(a + b)
    a, b = max(a, b), min(a, b)
    return f"compute : {a} - {b} =", str(a - b)


def reversal(rng) -> Example:
    """Three or four distinct nouns, written back to front."""
    words = _distinct(rng, L.all_nouns(), int(rng.integers(3, 5)))
    return f"reverse : {' '.join(words)} =", " ".join(reversed(words))


def sorting(rng) -> Example:
    """Three or four digits (repeats allowed), written in increasing order."""
    digits = [int(d) for d in rng.integers(10, size=int(rng.integers(3, 5)))]
    return f"sort : {' '.join(map(str, digits))} =", " ".join(map(str, sorted(digits)))


def translation(rng) -> Example:
    """A noun with one or two adjectives, translated word by word, the adjectives after the noun."""
    adjectives = _distinct(rng, L.ADJECTIVES, int(rng.integers(1, 3)))
    noun = _pick(rng, L.all_nouns())
    answer = " ".join(LEXICON[w] for w in [noun, *adjectives])
    return f"translate : {' '.join([*adjectives, noun])} =", answer


def polarity(rng) -> Example:
    """An opinion (as the sentiment task writes them), answered ``positive`` or ``negative``."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.3
    word = _pick(rng, L.POSITIVE if positive != negated else L.NEGATIVE)
    middle = ["not"] if negated else ([_pick(rng, L.INTENSIFIERS)] if rng.random() < 0.4 else [])
    opinion = " ".join(["the", _pick(rng, L.OPINION_NOUNS), "was", *middle, word, "."])
    return f"review : {opinion} label :", "positive" if positive else "negative"


# task → generator; every task is scored by exact match
TASKS: dict[str, Callable[[np.random.Generator], Example]] = {
    "lookup": lookup, "arithmetic": arithmetic, "reversal": reversal, "sorting": sorting,
    "translation": translation, "polarity": polarity,
}
PROMPT_WORDS = ["facts", "has", "question", "plus", "minus", "list", "read", "backwards", "numbers", "from", "small",
                "big", "so", "other", "language", "word", "compute", "+", "-", "=", "reverse", "sort", "translate",
                "review", "label", "positive", "negative", ":"]


def skills_corpus(count: int, seed: int = 0) -> list[str]:
    """Pre-training text about what the tasks ask, in its own wordings (never a task's prompt): sums and
    differences stated in words, lists read backwards or put in order, people and what they have (told twice),
    the made-up language's words one at a time, which words are positive or negative. As a language model's
    corpus holds arithmetic, lists and dictionaries, so that fine-tuning teaches a format, not a skill from
    nothing; no example is drawn by a task's generator."""
    rng = np.random.default_rng([seed, zlib.crc32(b"skills")])
    out = []
    for _ in range(count):
        kind = int(rng.integers(6))
        if kind == 0:
            a, b = int(rng.integers(10)), int(rng.integers(10))
            out.append(f"{a} plus {b} is {a + b} ." if rng.random() < 0.5 else
                       f"{max(a, b)} minus {min(a, b)} is {max(a, b) - min(a, b)} .")
        elif kind == 1:
            words = _distinct(rng, L.all_nouns(), int(rng.integers(2, 6)))
            out.append(f"the list {' '.join(words)} read backwards is {' '.join(reversed(words))} .")
        elif kind == 2:
            digits = [str(int(d)) for d in rng.integers(10, size=int(rng.integers(2, 6)))]
            out.append(f"the numbers {' '.join(digits)} from small to big are {' '.join(sorted(digits))} .")
        elif kind == 3:
            n = int(rng.integers(2, 5))
            names, things, told = _owners(rng, n)
            again = int(rng.integers(n))
            out.append(f"{told} so {names[again]} has the {things[again]} .")
        elif kind == 4:
            word = _pick(rng, _TRANSLATED)
            out.append(f"in the other language {word} is {LEXICON[word]} .")
        else:
            positive = rng.random() < 0.5
            word = _pick(rng, L.POSITIVE if positive else L.NEGATIVE)
            out.append(f"{word} is a {'positive' if positive else 'negative'} word .")
    return out


def formats_corpus(count: int, seed: int = 0) -> list[str]:
    """Pre-training text in the tasks' prompt formats over other content than the tasks': a fact found by its
    thing (``question : the cup is with ben``; the task asks for the thing), sums and differences with the
    operators in words, digits reversed (the task reverses nouns), two digits sorted (the task sorts three or
    four), one word translated (the task translates a phrase and moves its adjectives), one word's polarity (the
    task labels a sentence). What a language model's corpus holds of instruction-shaped text, so that an expert
    starts from a base that knows the formats; no example is drawn by a task's generator. (``pretrain.formats_size``;
    an experiment towards the generation suite's regime, docs/benchmarks.md.)"""
    rng = np.random.default_rng([seed, zlib.crc32(b"formats")])
    out = []
    for _ in range(count):
        kind = int(rng.integers(6))
        if kind == 0:
            n = int(rng.integers(2, 4))
            names, things, told = _owners(rng, n)
            asked = int(rng.integers(n))
            out.append(f"facts : {told} question : the {things[asked]} is with {names[asked]}")
        elif kind == 1:
            a, b = int(rng.integers(10)), int(rng.integers(10))
            out.append(f"compute : {a} plus {b} = {a + b}" if rng.random() < 0.5 else
                       f"compute : {max(a, b)} minus {min(a, b)} = {max(a, b) - min(a, b)}")
        elif kind == 2:
            digits = [str(int(d)) for d in rng.integers(10, size=int(rng.integers(2, 5)))]
            out.append(f"reverse : {' '.join(digits)} = {' '.join(reversed(digits))}")
        elif kind == 3:
            digits = [str(int(d)) for d in rng.integers(10, size=2)]
            out.append(f"sort : {' '.join(digits)} = {' '.join(sorted(digits))}")
        elif kind == 4:
            word = _pick(rng, L.all_nouns())
            out.append(f"translate : {word} = {LEXICON[word]}")
        else:
            positive = rng.random() < 0.5
            word = _pick(rng, L.POSITIVE if positive else L.NEGATIVE)
            out.append(f"review : {word} . label : {'positive' if positive else 'negative'}")
    return out


def generate(task: str, split: str, count: int, seed: int = 0) -> list[Example]:
    """``count`` examples of ``task`` for ``split`` (train or test): deterministic in (seed, task, split)."""
    rng = np.random.default_rng([seed, *(zlib.crc32(p.encode()) for p in ("generation", task, split))])
    return [TASKS[task](rng) for _ in range(count)]


def vocabulary() -> list[str]:
    """Every word a prompt or an answer can hold, beyond the language's own."""
    return sorted({*DIGITS, *LEXICON.values(), *PROMPT_WORDS})
