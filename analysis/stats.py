"""Paired tests for comparing two methods on the same test examples.

Both methods predict the same N examples, so their per-example differences are paired. The tests here
are about the *mean* difference (the number a table shows), not a median:

- :func:`sign_flip_test`: randomisation test of "mean difference 0" for per-example differences
  (correctness, log loss): under the null each difference is as likely to have either sign (SciPy's
  permutation test);
- :func:`paired_bootstrap_ece`: bootstrap over examples of the ECE difference (ECE is not a mean of
  per-example terms, so a bootstrap of the whole statistic), with a percentile interval;
- :func:`holm`: Holm's step-down correction when several methods are tested against one baseline.

All are conditional on the fitted models: they ask whether the difference on *these* test examples
could be noise of the test sample, not whether another training seed would give the same ranking
(report the spread over seeds for that).

Example::

    >>> sign_flip_test(np.full(50, 0.1)).p < 0.001
    True
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .metrics import ArrayLike, _array, _check_bins, _classification, bin_index

__all__ = ["PairedTest", "sign_flip_test", "paired_bootstrap_ece", "holm"]


class PairedTest(NamedTuple):
    """The mean difference (first minus second), a 95% interval and the two-sided p-value."""

    difference: float
    low: float
    high: float
    p: float


def sign_flip_test(differences: ArrayLike, draws: int = 10_000, seed: int = 0) -> PairedTest:
    """Two-sided sign-flip randomisation test of mean(differences) = 0 (``scipy.stats.permutation_test`` with
    ``permutation_type="samples"`` on one sample: exact over all 2^N sign patterns when they number at most
    ``draws``, else ``draws`` random ones); the interval is the percentile interval of ``scipy.stats.bootstrap``
    for the mean."""
    from scipy import stats as sp

    d = _array(differences).astype(np.float64).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(f"differences must be a non-empty array of finite numbers, got {d.size} values")
    if not np.any(d != 0):
        return PairedTest(0.0, 0.0, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    test = sp.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True, n_resamples=draws,
                               alternative="two-sided", random_state=rng)
    if d.size > 1:
        interval = sp.bootstrap((d,), np.mean, n_resamples=min(draws, 2000), method="percentile",
                                vectorized=True, random_state=rng).confidence_interval
        low, high = interval.low, interval.high
    else:
        low = high = d[0]
    return PairedTest(float(d.mean()), float(low), float(high), float(min(1.0, test.pvalue)))


def paired_bootstrap_ece(probs_a: Sequence[ArrayLike], probs_b: Sequence[ArrayLike], labels: ArrayLike,
                         n_bins: int = 15, draws: int = 2000, seed: int = 0) -> PairedTest:
    """ECE(a) - ECE(b) in points, averaged over paired runs (e.g. seeds), resampling the examples.

    ``probs_a[s]`` and ``probs_b[s]`` are (N, C) predictions of run ``s`` on the same examples. Each
    bootstrap draw resamples example indices once and recomputes every run's ECE on them. p is twice
    the smaller tail mass of the bootstrap distribution on either side of 0 (capped at 1). Not
    ``scipy.stats.bootstrap``: it gives an interval but no p-value, and one call per statistic would not
    share the resampled indices across the runs; the bins of every draw are counted at once here.
    """
    n_bins = _check_bins(n_bins)
    if len(probs_a) != len(probs_b) or not len(probs_a):
        raise ValueError(f"need the same non-zero number of runs for both methods, got {len(probs_a)} and {len(probs_b)}")
    y = _array(labels)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(draws, len(y)))

    def eces(probs: ArrayLike) -> tuple[float, np.ndarray]:
        p, labels_ = _classification(probs, y)
        conf, correct = p.max(1), (p.argmax(1) == labels_).astype(np.float64)
        bin_of = bin_index(conf, n_bins)
        gap = correct - conf
        full = np.abs(np.bincount(bin_of, weights=gap, minlength=n_bins)).sum() / len(y)
        flat = (bin_of[idx] + n_bins * np.arange(draws)[:, None]).ravel()
        sums = np.bincount(flat, weights=gap[idx].ravel(), minlength=draws * n_bins).reshape(draws, n_bins)
        return 100 * full, 100 * np.abs(sums).sum(1) / len(y)

    observed, boot = 0.0, np.zeros(draws)
    for a, b in zip(probs_a, probs_b):
        (ea, ba), (eb, bb) = eces(a), eces(b)
        observed += (ea - eb) / len(probs_a)
        boot += (ba - bb) / len(probs_a)
    low, high = np.percentile(boot, [2.5, 97.5])
    if np.all(boot == 0):
        return PairedTest(float(observed), 0.0, 0.0, 1.0)
    p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    return PairedTest(float(observed), float(low), float(high), float(max(p, 1 / draws)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; nan stays nan. (SciPy has
    Benjamini-Hochberg, ``false_discovery_control``, but not Holm; statsmodels, which has it, is not a
    dependency.)"""
    p = np.asarray(pvalues, dtype=np.float64)
    keep = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(p.shape, np.nan)
    order = keep[np.argsort(p[keep], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
