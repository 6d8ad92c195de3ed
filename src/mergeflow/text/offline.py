"""The eight generated GLUE-shaped tasks of the offline text suite and its pre-training corpus.

Each task mirrors one GLUE task's shape and metric — single sentences or pairs, two or three classes or a
score — on sentences of :mod:`mergeflow.text.language`. Generation is deterministic in (seed, task,
split). The pre-training corpus uses the same words in its own wordings (statements, questions, opinion
sentences, lists) and never a task's label: like the vision base, the text base learns the language, not
the tasks.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mergeflow.text import language as L

Example = tuple[str, str | None, float]  # (text_a, text_b or None, label: class id, or a score)


@dataclass(frozen=True)
class Generator:
    """How one offline task's examples are drawn: ``draw(rng) -> Example``."""

    draw: Callable[[np.random.Generator], Example]


def _pick(rng, xs):
    return xs[int(rng.integers(len(xs)))]


# --- single sentences ---------------------------------------------------------------------------------------
def acceptability(rng) -> Example:
    """CoLA's shape: is the sentence well formed? About 70 % are (CoLA's balance); the rest carry one error:
    two adjacent words swapped, a repeated article, a plural verb form or a missing article."""
    words = L.random_clause(rng).words()
    if rng.random() < 0.7:
        return L.sentence(words), None, 1
    kind = int(rng.integers(4))
    if kind == 0:
        i = int(rng.integers(len(words) - 1))
        while words[i] == words[i + 1]:
            i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == 1:
        words.insert(0, "the")
    elif kind == 2:
        for i, w in enumerate(words):
            if w in L.VERBS or w in L.INTRANSITIVE:
                words[i] = L.VERBS[w][0] if w in L.VERBS else L.INTRANSITIVE_BASE[w]
                break
        else:
            words.insert(1, "a")
    else:
        words = words[1:]
    return L.sentence(words), None, 0


def sentiment(rng) -> Example:
    """SST-2's shape: the polarity of an opinion; a ``not`` flips it, an intensifier does not."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.3
    word = _pick(rng, L.POSITIVE if positive != negated else L.NEGATIVE)
    subject = _pick(rng, L.OPINION_NOUNS)
    middle = ["not"] if negated else ([_pick(rng, L.INTENSIFIERS)] if rng.random() < 0.4 else [])
    lead = [_pick(rng, L.NAMES), "thinks"] if rng.random() < 0.3 else []
    words = [*lead, "the", subject, "was", *middle, word]
    if rng.random() < 0.3:
        words += ["and", "the", _pick(rng, L.PLACES), "was", _pick(rng, L.ADJECTIVES)]
    return L.sentence(words), None, int(positive)


# --- pairs ----------------------------------------------------------------------------------------------------
def paraphrase(rng) -> Example:
    """MRPC's shape: does the second sentence say the same (synonyms) or something else (one slot changed)?
    About two thirds are paraphrases, as in MRPC."""
    clause = L.random_clause(rng, transitive=True)
    if rng.random() < 0.67:
        return L.sentence(clause.words()), L.sentence(clause.words(synonyms=True)), 1
    other = L.changed(clause, rng, _pick(rng, ["subject", "verb", "obj"]))
    return L.sentence(clause.words()), L.sentence(other.words(synonyms=rng.random() < 0.5)), 0


def similarity(rng) -> Example:
    """STS-B's shape: a score in [0, 5], five times the share of the clause's five slots both sentences
    keep (synonyms count as kept)."""
    clause = L.random_clause(rng, transitive=True)
    clause = L.Clause(clause.subject, clause.subject_adj or _pick(rng, L.ADJECTIVES), clause.verb, clause.obj,
                      clause.obj_adj, clause.place or _pick(rng, L.PLACES), clause.adverb)
    slots = ["subject", "verb", "obj", "place", "adjective"]
    n_changed = int(rng.integers(len(slots) + 1))
    other = clause
    for slot in rng.permutation(slots)[:n_changed]:
        other = L.changed(other, rng, str(slot))
    score = 5.0 * (len(slots) - n_changed) / len(slots)
    return L.sentence(clause.words()), L.sentence(other.words(synonyms=rng.random() < 0.5)), score


def duplicate(rng) -> Example:
    """QQP's shape: do two questions ask the same? Reworded (synonyms) or about another slot value."""
    clause = L.random_clause(rng, transitive=True)
    slot = _pick(rng, ["subject", "object", "place"])
    if slot == "place" and clause.place is None:
        clause = L.Clause(*[*vars(clause).values()][:5], _pick(rng, L.PLACES), clause.adverb)
    q1 = L.question_about(clause, slot)
    if rng.random() < 0.4:
        q2 = [L.SYNONYMS.get(w, w) for w in q1]
        label = 1
    else:
        asked = {"subject": ["verb", "obj"], "object": ["subject", "verb"], "place": ["subject", "verb", "obj"]}
        q2 = L.question_about(L.changed(clause, rng, _pick(rng, asked[slot])), slot)  # a word the question has
        label = 0
    return " ".join(q1), " ".join(q2), label


def _hypothesis(clause: L.Clause, rng, label: int) -> list[str]:
    """A hypothesis the clause entails (0), is neutral to (1) or contradicts (2)."""
    if label == 0:  # drop details, or name the subject by its class
        if rng.random() < 0.5:
            return ["the", clause.subject, clause.verb, *(["the", clause.obj] if clause.obj else [])]
        cls = L.hypernym(clause.subject)
        return ["there", "is", L.article(cls), cls, *(["in", "the", clause.place] if clause.place else [])]
    if label == 1:  # a detail the premise does not state
        extra = L.Clause(clause.subject, clause.subject_adj, clause.verb, clause.obj, clause.obj_adj,
                         clause.place, clause.adverb)
        if clause.place is None:
            return L.Clause(*[*vars(extra).values()][:5], _pick(rng, L.PLACES), None).words()
        if clause.adverb is None:
            return L.Clause(*[*vars(extra).values()][:6], _pick(rng, L.ADVERBS)).words()
        return [*clause.words()[:3], "and", _pick(rng, L.NAMES), _pick(rng, list(L.INTRANSITIVE))]
    if clause.obj is None and rng.random() < 0.5:  # the opposite state
        return ["the", clause.subject, *L.INTRANSITIVE[clause.verb].split()]
    return clause.words(negated=True)


def inference(rng) -> Example:
    """MNLI's shape: entailment (0), neutral (1) or contradiction (2) of a premise and a hypothesis."""
    clause = L.random_clause(rng)
    label = int(rng.integers(3))
    return L.sentence(clause.words()), L.sentence(_hypothesis(clause, rng, label)), label


def qa_entail(rng) -> Example:
    """QNLI's shape: does the sentence answer the question (0: entailment, 1: not, GLUE's label order)?"""
    clause = L.random_clause(rng, transitive=True)
    if clause.place is None:
        clause = L.Clause(*[*vars(clause).values()][:5], _pick(rng, L.PLACES), clause.adverb)
    slot = _pick(rng, ["subject", "object", "place"])
    question = L.question_about(clause, slot)
    if rng.random() < 0.5:
        return " ".join(question), L.sentence(clause.words(synonyms=rng.random() < 0.3)), 0
    field = {"subject": "verb", "object": "subject", "place": "subject"}[slot]
    return " ".join(question), L.sentence(L.changed(clause, rng, field).words()), 1


def entail_binary(rng) -> Example:
    """RTE's shape: entailment (0) or not (1), from two-clause premises (harder, and fewer examples)."""
    first, second = L.random_clause(rng), L.random_clause(rng)
    premise = first.words() + ["and"] + second.words()
    about = first if rng.random() < 0.5 else second
    entailed = rng.random() < 0.5
    hypothesis = _hypothesis(about, rng, 0 if entailed else int(rng.choice([1, 2])))
    return L.sentence(premise), L.sentence(hypothesis), 0 if entailed else 1


# task → (generator, metric, labels (None: a regression score), pair?)
TASKS: dict[str, tuple[Callable, str, tuple[str, ...] | None]] = {
    "acceptability": (acceptability, "matthews", ("unacceptable", "acceptable")),
    "sentiment": (sentiment, "accuracy", ("negative", "positive")),
    "paraphrase": (paraphrase, "f1_accuracy", ("different", "equivalent")),
    "similarity": (similarity, "pearson_spearman", None),
    "duplicate": (duplicate, "f1_accuracy", ("different", "duplicate")),
    "inference": (inference, "accuracy", ("entailment", "neutral", "contradiction")),
    "qa_entail": (qa_entail, "accuracy", ("entailment", "not_entailment")),
    "entail_binary": (entail_binary, "accuracy", ("entailment", "not_entailment")),
}


def _rng(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(p.encode()) for p in parts)])


def generate(task: str, split: str, count: int, seed: int = 0) -> list[Example]:
    """``count`` examples of ``task`` for ``split`` (train or test): deterministic in (seed, task, split)."""
    draw = TASKS[task][0]
    rng = _rng(seed, "task", task, split)
    return [draw(rng) for _ in range(count)]


def corpus(count: int, seed: int = 0) -> list[str]:
    """Pre-training text: statements (plain, reworded, negated), questions, opinions and lists, unlabeled."""
    rng = _rng(seed, "corpus")
    out = []
    for _ in range(count):
        kind = rng.random()
        clause = L.random_clause(rng, animate=rng.random() < 0.9)
        if kind < 0.35:
            text = L.sentence(clause.words(synonyms=rng.random() < 0.3))
        elif kind < 0.5:
            text = L.sentence(clause.words(negated=True))
        elif kind < 0.6:
            text = " ".join(L.question_about(clause, _pick(rng, ["subject", "object", "place"]))
                            if clause.obj else L.question_about(clause, "subject"))
        elif kind < 0.75:
            other = L.random_clause(rng)
            text = L.sentence(clause.words() + [_pick(rng, ["and", "but"])] + other.words())
        elif kind < 0.88:
            word = _pick(rng, L.POSITIVE + L.NEGATIVE + L.ADJECTIVES)
            text = L.sentence(["this", _pick(rng, L.OPINION_NOUNS + L.PLACES), "is",
                               *([_pick(rng, L.INTENSIFIERS)] if rng.random() < 0.3 else []), word])
        else:
            cls = _pick(rng, list(L.NOUNS))
            members = list(rng.permutation(L.NOUNS[cls])[:3])
            text = L.sentence([_pick(rng, L.NUMBERS), *members[:1], "and", *members[1:2], "are", cls + "s"])
        out.append(text)
    return out


def pair_corpus(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Unlabeled sentence pairs for pre-training: a clause and its rewording, the clause with one slot changed,
    a question about it, or an unrelated clause. Masked-LM on pairs is where a model learns to look across
    the separator (a masked word is often the other sentence's word or its synonym), which every pair task
    then needs; no pair carries a label, and none is drawn by a task's generator."""
    rng = _rng(seed, "pairs")
    out = []
    for _ in range(count):
        clause = L.random_clause(rng, transitive=rng.random() < 0.7)
        kind = rng.random()
        if kind < 0.3:
            second = L.sentence(clause.words(synonyms=True))
        elif kind < 0.55:
            fields = ["subject", "verb", *(["obj"] if clause.obj else [])]
            second = L.sentence(L.changed(clause, rng, _pick(rng, fields)).words(synonyms=rng.random() < 0.5))
        elif kind < 0.75 and clause.obj:
            second = " ".join(L.question_about(clause, _pick(rng, ["subject", "object"])))
        else:
            second = L.sentence(L.random_clause(rng).words())
        out.append((L.sentence(clause.words()), second))
    return out
