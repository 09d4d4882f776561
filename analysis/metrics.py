"""Calibration and uncertainty metrics, one place for every command.

Pure functions on numpy arrays (torch tensors are converted). Conventions:

- classification: ``probs`` is (N, C), each row a distribution; ``labels`` is (N,) integer class indices;
- ECE and MCE bin the top-class confidence into ``n_bins`` equal-width bins, right-inclusive
  ``(b/n_bins, (b+1)/n_bins]``, a confidence of exactly 0 in the first bin; they are in percent
  (the convention of BLoB and the Bayesian Adaptation Gym); accuracy is a fraction;
- Brier is the multi-class score summed over classes, in [0, 2];
- regression: ``mean``, ``var`` and ``y`` have one shape (``var`` may be a scalar); entropies are in nats.

Example::

    >>> probs, labels = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0])
    >>> classification_metrics(probs, labels)["accuracy"]
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

__all__ = ["accuracy", "nll", "brier", "ece", "mce", "reliability_bins", "confidence_bins", "confidence_ece",
           "ReliabilityBins", "mse", "mae",
           "gaussian_nll", "interval_coverage", "accuracy_coverage_curve", "CoverageCurve", "selective_auc",
           "ood_auroc", "decompose", "Decomposition", "classification_metrics", "regression_metrics", "ece_floor",
           "ECEFloor"]

EPS = 1e-12  # probabilities and variances are clipped here before a log or a division

ArrayLike = Any  # numpy array, torch tensor, or nested sequence of numbers


def _array(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor; double() also covers bfloat16, which numpy cannot hold
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
        return x.numpy()
    return np.asarray(x)


def _classification(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, y = _array(probs).astype(np.float64), _array(labels)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs has shape {p.shape}; expected (N, C) class probabilities")
    if y.shape != (len(p),):
        raise ValueError(f"labels has shape {y.shape}; expected ({len(p)},), one label per row of probs")
    if len(p) == 0:
        raise ValueError("probs and labels are empty; expected at least one example")
    if not np.issubdtype(y.dtype, np.integer) and not np.array_equal(y, np.round(y)):
        raise ValueError(f"labels have non-integer values ({y.dtype}); expected class indices 0..C-1")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels span {y.min()}..{y.max()}; expected class indices 0..{p.shape[1] - 1}")
    return p, y


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins is {n_bins!r}; expected a positive integer")
    return int(n_bins)


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of examples whose most probable class is the label: 1/N sum_i [argmax_c p_ic = y_i]."""
    p, y = _classification(probs, labels)
    return float((p.argmax(1) == y).mean())


def nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood: -1/N sum_i log max(p_{i,y_i}, 1e-12)."""
    p, y = _classification(probs, labels)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0)).mean())


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: 1/N sum_i sum_c (p_ic - [y_i = c])^2, in [0, 2].

    This is scikit-learn's ``brier_score_loss`` for (N, C) probabilities, and for two classes it is
    exactly twice sklearn's default binary score (``scale_by_half="auto"`` halves binary scores only).
    """
    p, y = _classification(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(1).mean())


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Per confidence bin b = (edges[b], edges[b+1]]: example count, mean confidence, accuracy.

    ``confidence`` and ``accuracy`` are nan for empty bins; ``edges`` has n_bins + 1 entries.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def gaps(self) -> np.ndarray:
        """|accuracy - confidence| per bin (nan for empty bins)."""
        return np.abs(self.accuracy - self.confidence)


def bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """The equal-width, right-inclusive bin ``(b/n_bins, (b+1)/n_bins]`` of each confidence."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") puts a value equal to an edge below it: bins are (lo, hi];
    # the clip sends 0 to the first bin and rounding above 1 to the last.
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Bin examples by confidence max_c p_ic into equal-width right-inclusive bins (0 joins the first)."""
    p, y = _classification(probs, labels)
    return confidence_bins(p.max(1), p.argmax(1) == y, n_bins)


def confidence_bins(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """:func:`reliability_bins` from each prediction's confidence and whether it was right (any predictions:
    a language model's next tokens, generated answers)."""
    n_bins = _check_bins(n_bins)
    conf, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = bin_index(conf, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    safe = np.maximum(counts, 1)
    empty = counts == 0
    mean_conf = np.where(empty, np.nan, np.bincount(index, weights=conf, minlength=n_bins) / safe)
    mean_acc = np.where(empty, np.nan, np.bincount(index, weights=correct, minlength=n_bins) / safe)
    return ReliabilityBins(edges, counts, mean_conf, mean_acc)


def _ece(bins: ReliabilityBins) -> float:
    keep = bins.counts > 0
    return float(100 * (bins.counts[keep] / bins.counts.sum() * bins.gaps[keep]).sum())


def _mce(bins: ReliabilityBins) -> float:
    return float(100 * bins.gaps[bins.counts > 0].max())


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error in percent: 100 * sum_b |B_b|/N * |acc_b - conf_b|."""
    return _ece(reliability_bins(probs, labels, n_bins))


def confidence_ece(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """:func:`ece` (percent) from each prediction's confidence and whether it was right."""
    return _ece(confidence_bins(confidence, correct, n_bins))


def mce(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Maximum calibration error in percent: 100 * max_b |acc_b - conf_b| over non-empty bins."""
    return _mce(reliability_bins(probs, labels, n_bins))


class ECEFloor(NamedTuple):
    """ECE (%) of a perfectly calibrated model with the given confidences: mean and sd over label draws."""

    mean: float
    sd: float


def ece_floor(probs: ArrayLike, n_bins: int = 15, draws: int = 200, seed: int = 0) -> ECEFloor:
    """The ECE a *perfectly calibrated* model with these predictive probabilities would still show on
    this many examples, from finite-sample noise alone: labels are drawn from ``probs`` itself,
    ``draws`` times. An ECE near this floor cannot be lowered by better calibration, only by more
    test examples; with one bin of confidence ``c`` it is about ``100 sqrt(2 c (1 - c) / (pi N))``.
    """
    p = _array(probs).astype(np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array, got shape {p.shape}")
    if draws < 2:
        raise ValueError(f"draws must be at least 2, got {draws}")
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
    values = []
    for _ in range(draws):
        u = rng.random((len(p), 1))
        labels = np.minimum((u > cumulative).sum(1), p.shape[1] - 1)
        values.append(ece(p, labels, n_bins))
    return ECEFloor(float(np.mean(values)), float(np.std(values, ddof=1)))


def _regression(mean: ArrayLike, y: ArrayLike, var: ArrayLike | None = None) -> tuple[np.ndarray, ...]:
    m, t = _array(mean).astype(np.float64), _array(y).astype(np.float64)
    if m.shape != t.shape or m.ndim == 0:
        raise ValueError(f"mean has shape {m.shape} and y {t.shape}; expected one shape, e.g. (N,)")
    if m.size == 0:
        raise ValueError("mean and y are empty; expected at least one example")
    if var is None:
        return m, t
    v = _array(var).astype(np.float64)
    if v.shape not in (m.shape, ()):
        raise ValueError(f"var has shape {v.shape}; expected {m.shape} like mean, or a scalar")
    if (v < 0).any():
        raise ValueError(f"var has negative entries (min {v.min():.3g}); expected variances >= 0")
    return m, t, np.broadcast_to(v, m.shape)


def mse(mean: ArrayLike, y: ArrayLike) -> float:
    """Mean squared error: 1/N sum_i (mean_i - y_i)^2."""
    m, t = _regression(mean, y)
    return float(((m - t) ** 2).mean())


def mae(mean: ArrayLike, y: ArrayLike) -> float:
    """Mean absolute error: 1/N sum_i |mean_i - y_i|."""
    m, t = _regression(mean, y)
    return float(np.abs(m - t).mean())


def gaussian_nll(mean: ArrayLike, var: ArrayLike, y: ArrayLike) -> float:
    """Mean Gaussian negative log-likelihood: 1/N sum_i [0.5 log(2 pi v_i) + (y_i - mean_i)^2 / (2 v_i)].

    Variances are clipped at 1e-12 so that a zero variance gives a large, finite value.
    """
    m, t, v = _regression(mean, y, var)
    v = np.clip(v, EPS, None)
    return float((0.5 * np.log(2 * np.pi * v) + (t - m) ** 2 / (2 * v)).mean())


def interval_coverage(mean: ArrayLike, var: ArrayLike, y: ArrayLike, level: float = 0.9) -> float:
    """Fraction of targets in the central Gaussian interval: 1/N sum_i [|y_i - mean_i| <= z sqrt(v_i)].

    z = Phi^-1((1 + level) / 2), e.g. 1.645 for level 0.9; the interval is closed.
    """
    if not 0 < level < 1:
        raise ValueError(f"level is {level!r}; expected a probability strictly between 0 and 1")
    m, t, v = _regression(mean, y, var)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return float((np.abs(t - m) <= z * np.sqrt(v)).mean())


class CoverageCurve(NamedTuple):
    """coverage[k-1] = k/N and accuracy[k-1] = accuracy on the k most certain examples, k = 1..N."""

    coverage: np.ndarray
    accuracy: np.ndarray


def accuracy_coverage_curve(probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike | None = None
                            ) -> CoverageCurve:
    """Keep the k least uncertain examples (k = 1..N) and report the accuracy of what is kept.

    ``uncertainty`` (N,) defaults to 1 - max_c p_ic. Tied uncertainties are averaged over: inside a
    tie the kept accuracy is the expectation over a random order, so the curve does not depend on
    the order of the data.
    """
    p, y = _classification(probs, labels)
    u = 1 - p.max(1) if uncertainty is None else _array(uncertainty).astype(np.float64)
    if u.shape != y.shape:
        raise ValueError(f"uncertainty has shape {u.shape}; expected {y.shape}, one score per example")
    n = len(y)
    order = np.argsort(u, kind="stable")
    u_sorted, correct = u[order], (p.argmax(1) == y)[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])  # first index of each tie group
    sizes = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(len(starts)), sizes)  # (N,) tie group of each sorted example
    total = np.r_[0.0, np.cumsum(correct)]  # total[k] = correct among the first k
    rate = (total[starts + sizes] - total[starts]) / sizes  # accuracy inside each tie group
    kept = np.arange(1, n + 1)
    kept_correct = total[starts][group] + (kept - starts[group]) * rate[group]
    return CoverageCurve(kept / n, kept_correct / kept)


def selective_auc(probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike | None = None) -> float:
    """Area under accuracy vs coverage, in [0, 1]: 1/N sum_{k=1..N} acc(k most certain).

    The right Riemann sum over coverage k/N; 1 means every kept prefix is correct, and a model whose
    uncertainty carries no information scores its plain accuracy.
    """
    return float(accuracy_coverage_curve(probs, labels, uncertainty).accuracy.mean())


def _scores(x: ArrayLike, name: str) -> np.ndarray:
    s = _array(x).astype(np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ValueError(f"{name} has shape {s.shape}; expected (N,) with N >= 1 scores")
    if np.isnan(s).any():
        raise ValueError(f"{name} contains nan; expected real-valued scores")
    return s


def ood_auroc(uncertainty_in: ArrayLike, uncertainty_out: ArrayLike) -> float:
    """AUROC of flagging out-of-distribution inputs (positives) by higher uncertainty.

    Mann-Whitney: AUROC = (R_out - n_out (n_out + 1) / 2) / (n_in n_out), with R_out the sum of the
    OOD scores' ranks in the pooled sample, tied scores sharing their average rank (a tie counts 1/2).
    """
    a, b = _scores(uncertainty_in, "uncertainty_in"), _scores(uncertainty_out, "uncertainty_out")
    _, inverse, counts = np.unique(np.concatenate([a, b]), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based ranks, averaged over each tie group
    rank_sum_out = average_rank[inverse[len(a):]].sum()
    return float((rank_sum_out - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


class Decomposition(NamedTuple):
    """Predictive uncertainty split into aleatoric and epistemic parts; all (N,) but ``mean`` (N, C)."""

    mean: np.ndarray  # (N, C) Monte-Carlo predictive distribution
    predictive_entropy: np.ndarray  # total: H[mean]
    expected_entropy: np.ndarray  # aleatoric: mean over draws of H[draw]
    mutual_information: np.ndarray  # epistemic: predictive - expected, >= 0


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, EPS, 1.0))).sum(-1)  # 0 log 0 = 0


def decompose(sample_probs: ArrayLike) -> Decomposition:
    """Split uncertainty from K Monte-Carlo draws (K, N, C), in nats.

    H[1/K sum_k p_k] = 1/K sum_k H[p_k] + MI: predictive entropy = expected entropy + mutual
    information (MI is clipped at 0 against rounding).
    """
    s = _array(sample_probs).astype(np.float64)
    if s.ndim != 3 or s.shape[0] == 0:
        raise ValueError(f"sample_probs has shape {s.shape}; expected (K, N, C) with K >= 1 draws")
    mean = s.mean(0)  # (N, C)
    predictive, expected = _entropy(mean), _entropy(s).mean(0)
    return Decomposition(mean, predictive, expected, np.clip(predictive - expected, 0.0, None))


def classification_metrics(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> dict[str, float]:
    """accuracy (fraction), nll (nats), brier (multi-class, [0, 2]), ece and mce (percent)."""
    bins = reliability_bins(probs, labels, n_bins)
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels), "brier": brier(probs, labels),
            "ece": _ece(bins), "mce": _mce(bins)}


def regression_metrics(mean: ArrayLike, var: ArrayLike, y: ArrayLike) -> dict[str, float]:
    """mse, mae, Gaussian nll (nats) and coverage90 (fraction inside the central 90% interval)."""
    return {"mse": mse(mean, y), "mae": mae(mean, y), "nll": gaussian_nll(mean, var, y),
            "coverage90": interval_coverage(mean, var, y, 0.9)}
