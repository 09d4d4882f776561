"""Paired tests: known answers for the sign-flip test, the ECE bootstrap and Holm's correction."""

import math

import numpy as np
import pytest

from pyro_bhpeft.analysis import metrics, stats


def test_sign_flip_exact_small_case():
    # differences (1, 1, 1): of the 8 equally likely sign patterns, 2 reach |mean| = 1 -> p = 1/4, exactly
    # when the draws cover every pattern (enumerated), approximately when they sample them
    t = stats.sign_flip_test(np.ones(3), draws=40_000, seed=1)
    assert t.difference == 1.0 and t.p == pytest.approx(0.25, abs=1e-12)
    d = np.array([1.0, -0.5, 2.0, 0.25, 1.5, -1.0, 0.75, 1.25, 0.5, 2.5, -0.25, 1.0])  # 4096 patterns
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(d))).reshape(len(d), -1).T
    exact = np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12)
    assert stats.sign_flip_test(d, draws=5000).p == pytest.approx(exact, abs=1e-12)
    assert stats.sign_flip_test(d, draws=2000, seed=3).p == pytest.approx(exact, abs=0.02)


def test_sign_flip_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    assert stats.sign_flip_test(rng.normal(0.5, 1.0, 400)).p < 0.001
    null_p = [stats.sign_flip_test(rng.normal(0.0, 1.0, 200), draws=500, seed=s).p for s in range(200)]
    # under the null p is uniform: about 5% below 0.05
    assert 0.01 <= np.mean(np.array(null_p) < 0.05) <= 0.10
    assert stats.sign_flip_test(np.zeros(10)) == (0.0, 0.0, 0.0, 1.0)


def test_sign_flip_interval_matches_normal_theory():
    d = np.random.default_rng(3).normal(2.0, 1.0, 2000)
    t = stats.sign_flip_test(d)
    half = 1.96 * d.std() / math.sqrt(len(d))
    assert t.low == pytest.approx(d.mean() - half, abs=0.02) and t.high == pytest.approx(d.mean() + half, abs=0.02)


def _probs(conf, correct):
    """Two-class probabilities with top confidence ``conf``, right (label 0) where ``correct``."""
    p = np.stack([conf, 1 - conf], 1)
    return np.where(np.asarray(correct)[:, None], p, p[:, ::-1])


def test_bootstrap_ece_difference_is_the_metric_difference():
    rng = np.random.default_rng(0)
    n = 300
    labels = np.zeros(n, dtype=int)
    a = [_probs(rng.uniform(0.5, 1, n), rng.random(n) < 0.75) for _ in range(2)]
    b = [_probs(rng.uniform(0.5, 1, n), rng.random(n) < 0.75) for _ in range(2)]
    t = stats.paired_bootstrap_ece(a, b, labels, draws=500)
    expected = np.mean([metrics.ece(pa, labels) - metrics.ece(pb, labels) for pa, pb in zip(a, b)])
    assert t.difference == pytest.approx(expected, abs=1e-9)
    assert t.low < t.difference < t.high
    same = stats.paired_bootstrap_ece(a, a, labels, draws=200)
    assert same == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_ece_separates_calibrated_from_overconfident():
    rng = np.random.default_rng(1)
    n = 1000
    labels = np.zeros(n, dtype=int)
    conf = rng.uniform(0.5, 1, n)
    calibrated = _probs(conf, rng.random(n) < conf)
    overconfident = _probs(np.full(n, 0.99), rng.random(n) < conf)  # same accuracy, claims 99%
    t = stats.paired_bootstrap_ece([overconfident], [calibrated], labels, draws=1000)
    assert t.difference > 15 and t.p <= 0.002


def test_holm_known_values_and_nan():
    # sorted 0.01, 0.02, 0.04 with m = 3: 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone
    out = stats.holm([float("nan"), 0.01])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.01)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="non-empty"):
        stats.sign_flip_test([])
    with pytest.raises(ValueError, match="same non-zero number of runs"):
        stats.paired_bootstrap_ece([np.eye(2)], [], [0, 1])
