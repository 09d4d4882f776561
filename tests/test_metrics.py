"""Metrics against hand-computed values and against scikit-learn as the reference library."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from pyro_bhpeft.analysis import metrics as m

PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
LABELS = np.array([0, 1, 1, 0])


def test_hand_computed_values():
    assert m.accuracy(PROBS, LABELS) == 0.5
    assert m.nll(PROBS, LABELS) == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.4) + np.log(0.3)) / 4)
    # Brier: sum over classes of squared error, averaged: (0.02 + 0.08 + 0.72 + 0.98) / 4
    assert m.brier(PROBS, LABELS) == pytest.approx((0.02 + 0.08 + 0.72 + 0.98) / 4)
    # confidences 0.9, 0.8, 0.6, 0.7 each alone in a bin (15 bins); correct, correct, wrong, wrong
    assert m.ece(PROBS, LABELS) == pytest.approx(100 * (0.1 + 0.2 + 0.6 + 0.7) / 4)
    assert m.mce(PROBS, LABELS) == pytest.approx(70.0)


def test_against_scikit_learn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 500)
    assert m.accuracy(probs, labels) == pytest.approx(sk.accuracy_score(labels, probs.argmax(1)))
    assert m.nll(probs, labels) == pytest.approx(sk.log_loss(labels, probs, labels=range(4)))
    binary = probs[:, :2] / probs[:, :2].sum(1, keepdims=True)
    y2 = labels % 2
    assert m.brier(binary, y2) == pytest.approx(2 * sk.brier_score_loss(y2, binary[:, 1]))
    a, b = rng.normal(size=300), rng.normal(0.5, 1.0, size=200)
    expected = sk.roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert m.ood_auroc(a, b) == pytest.approx(expected)
    mean, y = rng.normal(size=50), rng.normal(size=50)
    assert m.mse(mean, y) == pytest.approx(sk.mean_squared_error(y, mean))
    assert m.mae(mean, y) == pytest.approx(sk.mean_absolute_error(y, mean))


def _loop_ece(probs, labels, n_bins=15):
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for lo, hi in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
    return 100 * total


def test_ece_matches_an_independent_loop_and_ties_on_bin_edges():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=1000)
    probs[:10] = [1 / 3 + 2 / 15 - 1e-12, 1 / 3 - 1 / 15, 1 / 3 - 1 / 15]  # near an edge
    labels = rng.integers(0, 3, 1000)
    assert m.ece(probs, labels) == pytest.approx(_loop_ece(probs, labels))
    edge = np.array([[0.6, 0.4], [0.4, 0.6]])  # 0.6 = 9/15 belongs to the bin (8/15, 9/15]
    bins = m.reliability_bins(edge, np.array([0, 1]))
    assert bins.counts[8] == 2


def test_uncertainty_decomposition_invariants():
    rng = np.random.default_rng(2)
    draws = rng.dirichlet(np.ones(3), size=(8, 20))
    mean, predictive, expected, mi = m.decompose(draws)
    assert np.allclose(mean, draws.mean(0))
    assert (mi >= 0).all()
    assert np.allclose(predictive, expected + mi)
    same = np.repeat(draws[:1], 8, axis=0)
    assert np.allclose(m.decompose(same)[3], 0.0)


def test_regression_coverage_and_nll():
    rng = np.random.default_rng(3)
    mean, var = np.zeros(20000), np.full(20000, 4.0)
    y = rng.normal(0, 2, 20000)
    assert m.interval_coverage(mean, var, y, 0.9) == pytest.approx(0.9, abs=0.01)
    assert m.gaussian_nll(np.zeros(1), np.ones(1), np.zeros(1)) == pytest.approx(0.5 * np.log(2 * np.pi))


def test_selective_prediction_and_auc():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 0, 1, 1])  # the two confident ones are right
    coverage, acc = m.accuracy_coverage_curve(probs, labels)
    assert np.allclose(coverage, [0.25, 0.5, 0.75, 1.0]) and np.allclose(acc, [1, 1, 2 / 3, 0.5])
    assert m.selective_auc(probs, labels) == pytest.approx((1 + 1 + 2 / 3 + 0.5) / 4)


def test_bad_shapes_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"expected probs \(N, C\)"):
        m.ece(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="labels must lie"):
        m.accuracy(PROBS, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="same shape"):
        m.mse(np.zeros(3), np.zeros(4))
