"""GLUE's metrics, one function each, and the registry the text tasks name them from.

Each function takes predictions and references (class ids, or scores for regression) and returns its
figures in percent with ``score``, the task's headline: accuracy; the mean of F1 and accuracy (MRPC,
QQP); Matthews correlation (CoLA); the mean of Pearson and Spearman correlations (STS-B), as GLUE
averages them; and exact match of generated answers (the generation suite).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mergeflow.errors import MergeflowError


def _arrays(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape or p.ndim != 1:
        raise MergeflowError(f"metric: {p.shape[0] if p.ndim else 0} predictions for {r.shape[0] if r.ndim else 0} "
                             "references; expected two vectors of one length")
    if not len(r):
        raise MergeflowError("metric: no examples to score")
    return p, r


def accuracy(predictions, references) -> dict[str, float]:
    p, r = _arrays(predictions, references)
    acc = 100.0 * float(np.mean(p == r))
    return {"accuracy": acc, "score": acc}


def f1_accuracy(predictions, references) -> dict[str, float]:
    """F1 of the positive class (label 1) and accuracy; the headline is their mean."""
    p, r = _arrays(predictions, references)
    tp = float(np.sum((p == 1) & (r == 1)))
    fp, fn = float(np.sum((p == 1) & (r != 1))), float(np.sum((p != 1) & (r == 1)))
    f1 = 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    acc = 100.0 * float(np.mean(p == r))
    return {"f1": f1, "accuracy": acc, "score": (f1 + acc) / 2}


def matthews(predictions, references) -> dict[str, float]:
    """Matthews correlation of binary labels. Constant references make it undefined: an error. Constant
    predictions give 0 (the convention of GLUE's scorer, scikit-learn's ``matthews_corrcoef``), flagged."""
    p, r = _arrays(predictions, references)
    if len(np.unique(r)) < 2:
        raise MergeflowError("matthews: every reference has one label; Matthews correlation is undefined")
    classes = np.union1d(np.unique(p), np.unique(r))
    c = np.array([[np.sum((r == a) & (p == b)) for b in classes] for a in classes], dtype=np.float64)
    t, q = c.sum(1), c.sum(0)  # true and predicted counts per class
    n, correct = c.sum(), np.trace(c)
    den = np.sqrt((n ** 2 - q @ q) * (n ** 2 - t @ t))
    mcc = float((correct * n - t @ q) / den) if den > 0 else 0.0
    out = {"matthews": 100.0 * mcc, "score": 100.0 * mcc}
    if den == 0:
        out["undefined"] = 1.0  # constant predictions
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's correlation uses them."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0
        start = end + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else None


def pearson_spearman(predictions, references) -> dict[str, float]:
    """Pearson and Spearman correlations of scores; the headline is their mean. A constant prediction
    makes both undefined: scored 0 and flagged."""
    p, r = _arrays(predictions, references)
    p, r = p.astype(np.float64), r.astype(np.float64)
    if np.all(r == r[0]):
        raise MergeflowError("pearson_spearman: every reference has one value; the correlations are undefined")
    pearson, spearman = _pearson(p, r), _pearson(_ranks(p), _ranks(r))
    out = {"pearson": 100.0 * (pearson or 0.0), "spearman": 100.0 * (spearman or 0.0)}
    out["score"] = (out["pearson"] + out["spearman"]) / 2
    if pearson is None:
        out["undefined"] = 1.0
    return out


def exact_match(predictions, references) -> dict[str, float]:
    """The percentage of answers equal to their reference, word for word (runs of spaces and the ends do not
    count: a generated answer is its words joined by one space)."""
    p, r = _arrays([" ".join(str(x).split()) for x in predictions], [" ".join(str(x).split()) for x in references])
    match = 100.0 * float(np.mean(p == r))
    return {"exact_match": match, "score": match}


def external(predictions, references) -> dict[str, float]:
    """A calibration task's metric: it is scored outside mergeflow (e.g. by MTEB on the merged model)."""
    raise MergeflowError("metric: this task is scored outside mergeflow (a calibration task: its texts serve "
                         "the statistics only)")


METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "accuracy": accuracy, "f1_accuracy": f1_accuracy, "matthews": matthews, "pearson_spearman": pearson_spearman,
    "exact_match": exact_match, "external": external,
}


def get_metric(name: str) -> Callable[..., dict[str, float]]:
    try:
        return METRICS[name]
    except KeyError:
        raise MergeflowError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
