"""GLUE's metrics (mergeflow.text.metrics) against scikit-learn's and SciPy's on fixed inputs."""

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from mergeflow.errors import MergeflowError
from mergeflow.text.metrics import METRICS, accuracy, f1_accuracy, matthews, pearson_spearman

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 300)
PREDS = np.where(RNG.random(300) < 0.8, LABELS, 1 - LABELS)
THREE = RNG.integers(0, 3, 300)
SCORES = RNG.random(300) * 5
NOISY = np.round(SCORES + RNG.normal(0, 1, 300), 1)  # rounded: ties for Spearman's average ranks


def test_classification_metrics_equal_scikit_learn():
    assert accuracy(PREDS, LABELS)["accuracy"] == pytest.approx(100 * accuracy_score(LABELS, PREDS))
    out = f1_accuracy(PREDS, LABELS)
    assert out["f1"] == pytest.approx(100 * f1_score(LABELS, PREDS))
    assert out["score"] == pytest.approx((out["f1"] + out["accuracy"]) / 2)
    assert matthews(PREDS, LABELS)["matthews"] == pytest.approx(100 * matthews_corrcoef(LABELS, PREDS))
    shuffled = RNG.permutation(THREE)
    assert matthews(shuffled, THREE)["score"] == pytest.approx(100 * matthews_corrcoef(THREE, shuffled))


def test_correlations_equal_scipy():
    out = pearson_spearman(NOISY, SCORES)
    assert out["pearson"] == pytest.approx(100 * sps.pearsonr(NOISY, SCORES)[0])
    assert out["spearman"] == pytest.approx(100 * sps.spearmanr(NOISY, SCORES)[0])
    assert out["score"] == pytest.approx((out["pearson"] + out["spearman"]) / 2)


def test_constant_predictions_score_zero_and_say_so():
    out = matthews(np.zeros(300, int), LABELS)
    assert out["score"] == 0.0 and out["undefined"] == 1.0
    assert matthews_corrcoef(LABELS, np.zeros(300, int)) == 0.0  # GLUE's scorer's convention
    out = pearson_spearman(np.full(300, 2.5), SCORES)
    assert out["score"] == 0.0 and out["undefined"] == 1.0


def test_undefined_references_and_bad_shapes_are_one_line_errors():
    with pytest.raises(MergeflowError, match="matthews: every reference has one label"):
        matthews(PREDS, np.ones(300, int))
    with pytest.raises(MergeflowError, match="pearson_spearman: every reference has one value"):
        pearson_spearman(NOISY, np.ones(300))
    with pytest.raises(MergeflowError, match="metric: 3 predictions for 300 references"):
        accuracy(PREDS[:3], LABELS)
    with pytest.raises(MergeflowError, match="metric: no examples"):
        accuracy([], [])
    assert set(METRICS) == {"accuracy", "f1_accuracy", "matthews", "pearson_spearman", "exact_match", "external"}
    with pytest.raises(MergeflowError, match="metric: this task is scored outside mergeflow"):
        METRICS["external"](PREDS, LABELS)
