"""Calibration and uncertainty metrics, one place for every command.

Conventions: probabilities are (N, C) arrays, labels (N,) integers; ECE and MCE use 15 equal-width
bins of the top-class confidence, right-inclusive ``(lo, hi]`` with 0 in the first bin, reported in
percent (the convention of BLoB and the Bayesian Adaptation Gym); entropies are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["accuracy", "nll", "brier", "ece", "mce", "reliability_bins", "ReliabilityBins", "mse", "mae",
           "gaussian_nll", "interval_coverage", "accuracy_coverage_curve", "selective_auc", "ood_auroc",
           "decompose", "classification_metrics", "regression_metrics"]

EPS = 1e-12


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _np(probs).astype(np.float64), _np(labels).astype(np.int64)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y):
        raise ValueError(f"expected probs (N, C) and labels (N,), got {p.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}, got {y.min()}..{y.max()}")
    return p, y


def accuracy(probs, labels) -> float:
    """Fraction of examples whose most probable class is the label."""
    p, y = _check(probs, labels)
    return float((p.argmax(1) == y).mean())


def nll(probs, labels) -> float:
    """Mean negative log-likelihood, -1/N sum_i log p_i[y_i]."""
    p, y = _check(probs, labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0)).mean())


def brier(probs, labels) -> float:
    """Multi-class Brier score, 1/N sum_i sum_c (p_ic - [y_i = c])^2 (twice sklearn's binary score)."""
    p, y = _check(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(1).mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: edges (n_bins + 1,), counts, mean confidence and accuracy (nan if empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(probs, labels, n_bins: int = 15) -> ReliabilityBins:
    p, y = _check(probs, labels)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # (lo, hi]
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / counts
        mean_acc = np.bincount(index, weights=correct, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, mean_acc)


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error in %: 100 * sum_b |B_b|/N |acc_b - conf_b|."""
    b = reliability_bins(probs, labels, n_bins)
    keep = b.counts > 0
    return float(100 * (b.counts[keep] / b.counts.sum() * np.abs(b.accuracy[keep] - b.confidence[keep])).sum())


def mce(probs, labels, n_bins: int = 15) -> float:
    """Maximum calibration error in %: 100 * max_b |acc_b - conf_b| over non-empty bins."""
    b = reliability_bins(probs, labels, n_bins)
    keep = b.counts > 0
    return float(100 * np.abs(b.accuracy[keep] - b.confidence[keep]).max()) if keep.any() else 0.0


def _reg(mean, y) -> tuple[np.ndarray, np.ndarray]:
    m, t = _np(mean).astype(np.float64), _np(y).astype(np.float64)
    if m.shape != t.shape or m.ndim != 1:
        raise ValueError(f"expected predictions and targets of the same shape (N,), got {m.shape} and {t.shape}")
    return m, t


def mse(mean, y) -> float:
    m, t = _reg(mean, y)
    return float(((m - t) ** 2).mean())


def mae(mean, y) -> float:
    m, t = _reg(mean, y)
    return float(np.abs(m - t).mean())


def gaussian_nll(mean, var, y) -> float:
    """Mean of 0.5 log(2 pi var) + (y - mean)^2 / (2 var)."""
    m, t = _reg(mean, y)
    v = np.clip(_np(var).astype(np.float64), EPS, None)
    return float((0.5 * np.log(2 * np.pi * v) + (t - m) ** 2 / (2 * v)).mean())


def interval_coverage(mean, var, y, level: float = 0.9) -> float:
    """Fraction of targets inside the central ``level`` Gaussian predictive interval."""
    m, t = _reg(mean, y)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return float((np.abs(t - m) <= z * np.sqrt(_np(var).astype(np.float64))).mean())


def accuracy_coverage_curve(probs, labels, uncertainty=None) -> tuple[np.ndarray, np.ndarray]:
    """Keep the most certain fraction (coverage) and report accuracy on what is kept.

    ``uncertainty`` defaults to 1 - max probability; ties keep their original order.
    """
    p, y = _check(probs, labels)
    u = 1 - p.max(1) if uncertainty is None else _np(uncertainty).astype(np.float64)
    order = np.argsort(u, kind="stable")
    correct = (p.argmax(1) == y)[order].astype(np.float64)
    kept = np.arange(1, len(y) + 1)
    return kept / len(y), np.cumsum(correct) / kept


def selective_auc(probs, labels, uncertainty=None) -> float:
    """Area under accuracy vs coverage (mean accuracy over coverage levels 1/N..1), in [0, 1]."""
    _, acc = accuracy_coverage_curve(probs, labels, uncertainty)
    return float(acc.mean())


def ood_auroc(uncertainty_in, uncertainty_out) -> float:
    """AUROC of flagging out-of-distribution inputs (positives) by higher uncertainty (ties count half)."""
    a, b = _np(uncertainty_in).astype(np.float64).ravel(), _np(uncertainty_out).astype(np.float64).ravel()
    if not len(a) or not len(b):
        raise ValueError("ood_auroc needs at least one in- and one out-of-distribution score")
    scores = np.concatenate([a, b])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties (Mann-Whitney U)
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def decompose(sample_probs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From draws (K, N, C): mean probs, predictive entropy, expected entropy, mutual information."""
    s = _np(sample_probs).astype(np.float64)
    if s.ndim != 3:
        raise ValueError(f"expected sample probabilities of shape (K, N, C), got {s.shape}")
    mean = s.mean(0)
    entropy = lambda p: -(p * np.log(np.clip(p, EPS, 1.0))).sum(-1)  # noqa: E731
    predictive, expected = entropy(mean), entropy(s).mean(0)
    return mean, predictive, expected, np.clip(predictive - expected, 0.0, None)


def classification_metrics(probs, labels, n_bins: int = 15) -> dict[str, float]:
    """accuracy (fraction), nll, brier, ece and mce (in %), selective_auc."""
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels), "brier": brier(probs, labels),
            "ece": ece(probs, labels, n_bins), "mce": mce(probs, labels, n_bins),
            "selective_auc": selective_auc(probs, labels)}


def regression_metrics(mean, var, y) -> dict[str, float]:
    """mse, mae, Gaussian nll and 90% interval coverage."""
    return {"mse": mse(mean, y), "mae": mae(mean, y), "nll": gaussian_nll(mean, var, y),
            "coverage90": interval_coverage(mean, var, y, 0.9)}
