"""Figures a person would rather look at than a table.

Each ``name(data, path)`` function draws on its own ``matplotlib.figure.Figure`` (rendered by Agg, no
pyplot state: the caller's backend is left alone and nothing needs ``show``), writes one PNG atomically
(:func:`pyro_bhpeft.io.atomic_file`: a temporary file in the same folder, then a rename) and returns its
``Path``. Each ``draw_*(ax, ...)`` function draws the same thing on axes you already have. ``results``
arguments map a method name to ``(probs, labels)``; the i-th method gets the i-th tab10 colour in every
figure, so pass methods in the same order for matching colours.

Example::

    >>> plots.reliability_diagram({"LoRA": (p0, y), "BH-PEFT": (p1, y)}, "out/reliability.png")
    PosixPath('out/reliability.png')
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pyro_bhpeft.io import atomic_file

from . import metrics

__all__ = ["save", "reliability_diagram", "confidence_histogram", "accuracy_coverage", "uncertainty_histogram",
           "elbo_trace", "scale_forest", "accuracy_over_rounds", "draw_reliability", "draw_confidence_histogram",
           "draw_accuracy_coverage", "draw_uncertainty_histogram", "draw_elbo_trace", "draw_scale_forest",
           "draw_accuracy_over_rounds", "posterior_forest", "posterior_densities", "interval_coverage",
           "draw_interval_coverage", "COLORS"]

COLORS = tuple(colormaps["tab10"].colors)  # method i gets COLORS[i % 10]
DPI = 120
Results = Mapping[str, tuple[Any, Any]]  # method -> (probs (N, C), labels (N,))


def _color(i: int) -> tuple[float, float, float]:
    return COLORS[i % len(COLORS)]


def _nonempty(data: Mapping | Sequence, what: str) -> None:
    if len(data) == 0:
        raise ValueError(f"{what} is empty; expected at least one entry to plot")


def _write(fig: Figure, path: str | Path, draw: Callable[[], Any]) -> Path:
    """Draw, then save as PNG to a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path {str(path)!r} does not end in .png; expected a PNG file name")
    draw()
    with warnings.catch_warnings():  # a crowded figure is still worth writing
        warnings.filterwarnings("ignore", message=".*[Tt]ight.?layout", category=UserWarning)
        fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def save(fig: Figure, path: str | Path) -> Path:
    """Save a finished figure as PNG atomically (temporary file, then rename), like every plot here."""
    return _write(fig, path, lambda: None)


def _figure(width: float = 6.0, height: float = 4.0) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height))  # not pyplot: no global figure list, no backend switch
    return fig, fig.subplots()


def _panels(n: int, height: float = 4.2, columns: int = 4) -> tuple[Figure, np.ndarray]:
    """``n`` panels in rows of at most ``columns`` (a comparison of 11 methods stays readable)."""
    cols = min(n, columns)
    rows = -(-n // cols)
    fig = Figure(figsize=(4.2 * cols, height * rows))
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[n:]:
        fig.delaxes(ax)
    return fig, grid[:n]


def draw_reliability(ax: Axes, probs: Any, labels: Any, n_bins: int = 15, *, color: Any = COLORS[0],
                     title: str = "") -> Axes:
    """Accuracy per confidence bin (bars) against the diagonal, the gap to mean confidence shaded; the number
    of examples in each bin is printed at the foot of its bar (a bar of 3 examples says little)."""
    bins = metrics.reliability_bins(probs, labels, n_bins)
    keep = bins.counts > 0
    centers, width = (bins.edges[:-1] + bins.edges[1:])[keep] / 2, 1.0 / len(bins.counts)
    acc, conf = bins.accuracy[keep], bins.confidence[keep]
    ax.bar(centers, acc, width=width, color=color, edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar(centers, np.abs(conf - acc), bottom=np.minimum(acc, conf), width=width, color="tab:red", alpha=0.3,
           hatch="//", edgecolor="tab:red", linewidth=0.5, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for x, n in zip(centers, bins.counts[keep]):  # how many examples each bar rests on, at its foot
        ax.text(x, 0.015, f"n={int(n)}", ha="center", va="bottom", fontsize=6, rotation=90,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.5})
    ece = metrics.ece(probs, labels, n_bins)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
           title=f"{title}\nECE {ece:.2f}%" if title else f"ECE {ece:.2f}%")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def reliability_diagram(results: Results, path: str | Path, n_bins: int = 15) -> Path:
    """One reliability panel per method, side by side, ECE (%) in each title."""
    _nonempty(results, "results")
    fig, axes = _panels(len(results))
    def draw() -> None:
        for i, (ax, (name, (probs, labels))) in enumerate(zip(axes, results.items(), strict=True)):
            draw_reliability(ax, probs, labels, n_bins, color=_color(i), title=name)

    return _write(fig, path, draw)


def draw_confidence_histogram(ax: Axes, results: Results, n_bins: int = 15) -> Axes:
    """Examples per confidence bin (the ECE bins) per method; mean confidence and accuracy in the legend."""
    _nonempty(results, "results")
    for i, (name, (probs, labels)) in enumerate(results.items()):
        bins = metrics.reliability_bins(probs, labels, n_bins)
        keep = bins.counts > 0
        mean_conf = float((bins.counts[keep] * bins.confidence[keep]).sum() / bins.counts.sum())
        label = f"{name} (mean conf {mean_conf:.2f}, acc {metrics.accuracy(probs, labels):.2f})"
        ax.stairs(bins.counts, bins.edges, fill=True, color=_color(i), alpha=0.3)
        ax.stairs(bins.counts, bins.edges, color=_color(i), linewidth=1.5, label=label)
    ax.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="examples", title="Confidence histogram")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def confidence_histogram(results: Results, path: str | Path, n_bins: int = 15) -> Path:
    """All methods' confidence histograms overlaid on one axis."""
    fig, ax = _figure()
    return _write(fig, path, lambda: draw_confidence_histogram(ax, results, n_bins))


def draw_accuracy_coverage(ax: Axes, results: Results) -> Axes:
    """Accuracy on the kept examples as coverage grows from the most certain; selective AUC in the legend."""
    _nonempty(results, "results")
    for i, (name, (probs, labels)) in enumerate(results.items()):
        curve = metrics.accuracy_coverage_curve(probs, labels)
        ax.plot(curve.coverage, curve.accuracy, color=_color(i),
                label=f"{name} (selective AUC {curve.accuracy.mean():.3f})")
    ax.set(xlim=(0, 1), xlabel="coverage (fraction kept, most certain first)", ylabel="accuracy on kept",
           title="Selective prediction: accuracy vs coverage")
    ax.legend(loc="lower left", fontsize=8)
    return ax


def accuracy_coverage(results: Results, path: str | Path) -> Path:
    """Accuracy-coverage curves of all methods on one axis."""
    fig, ax = _figure()
    return _write(fig, path, lambda: draw_accuracy_coverage(ax, results))


def draw_interval_coverage(ax: Axes, results: Mapping[str, tuple[Any, Any, Any]]) -> Axes:
    """Regression: the fraction of labels inside each central predictive interval against its nominal level
    (the diagonal is a calibrated Gaussian predictive; below it, intervals too narrow)."""
    _nonempty(results, "results")
    levels = np.linspace(0.05, 0.95, 19)
    for i, (name, (mean, var, y)) in enumerate(results.items()):
        covered = [metrics.interval_coverage(mean, var, y, level) for level in levels]
        ax.plot(levels, covered, marker=".", color=_color(i),
                label=f"{name} (90 %: {100 * metrics.interval_coverage(mean, var, y, 0.9):.1f} %)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal level of the central interval", ylabel="fraction covered",
           title="Regression: predictive interval coverage")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def interval_coverage(results: Mapping[str, tuple[Any, Any, Any]], path: str | Path) -> Path:
    """Interval coverage curves of all methods (``name -> (mean, variance, labels)``) on one axis."""
    fig, ax = _figure()
    return _write(fig, path, lambda: draw_interval_coverage(ax, results))


def draw_uncertainty_histogram(ax: Axes, in_scores: Any, out_scores: Any, *, title: str = "",
                               xlabel: str = "predictive entropy (nats)") -> Axes:
    """Densities of in- and out-of-distribution uncertainty; OOD AUROC in the title."""
    auroc = metrics.ood_auroc(in_scores, out_scores)  # validates both
    a, b = (np.asarray(metrics._array(s), dtype=np.float64) for s in (in_scores, out_scores))
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, 31)
    ax.hist(a, bins=edges, alpha=0.5, color="tab:blue", label=f"in-distribution (n={len(a)})", density=True)
    ax.hist(b, bins=edges, alpha=0.5, color="tab:orange", label=f"out-of-distribution (n={len(b)})",
            density=True)
    head = f"{title}\n" if title else ""
    ax.set(xlabel=xlabel, ylabel="density", title=f"{head}OOD AUROC {auroc:.3f}")
    ax.legend(fontsize=8)
    return ax


def uncertainty_histogram(in_scores: Mapping[str, Any], out_scores: Mapping[str, Any], path: str | Path,
                          xlabel: str = "predictive entropy (nats)") -> Path:
    """One panel per method: in- vs out-of-distribution uncertainty, OOD AUROC in each title."""
    _nonempty(in_scores, "in_scores")
    if set(in_scores) != set(out_scores):
        raise ValueError(f"in_scores has methods {sorted(in_scores)} and out_scores {sorted(out_scores)}; "
                         "expected the same methods in both")
    fig, axes = _panels(len(in_scores), height=3.8)
    def draw() -> None:
        for ax, name in zip(axes, in_scores, strict=True):
            draw_uncertainty_histogram(ax, in_scores[name], out_scores[name], title=name, xlabel=xlabel)

    return _write(fig, path, draw)


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` values (fewer at the ends), same length as x: no lag behind the raw trace."""
    total = np.r_[0.0, np.cumsum(x)]
    index = np.arange(len(x))
    start, end = np.maximum(index - window // 2, 0), np.minimum(index + (window + 1) // 2, len(x))
    return (total[end] - total[start]) / (end - start)


def draw_elbo_trace(ax: Axes, histories: Mapping[str, Sequence[float]], window: int | None = None,
                    ylabel: str = "loss per example (-ELBO / N)") -> Axes:
    """Loss per step: the raw trace faint, a centred moving average on top (window ~ steps / 20)."""
    _nonempty(histories, "histories")
    losses = [np.asarray(h, dtype=np.float64).ravel() for h in histories.values()]
    for i, (name, loss) in enumerate(zip(histories, losses, strict=True)):
        w = window or max(1, len(loss) // 20)
        ax.plot(loss, color=_color(i), alpha=0.25, linewidth=0.8)
        ax.plot(_moving_average(loss, w) if len(loss) else loss, color=_color(i), linewidth=1.6,
                label=f"{name} (moving average of {w})" if w > 1 else name)
    finite = np.concatenate(losses)
    finite = finite[np.isfinite(finite)]
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 30:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=ylabel, title="Training loss")
    ax.legend(fontsize=8)
    return ax


def elbo_trace(histories: Mapping[str, Sequence[float]], path: str | Path, window: int | None = None) -> Path:
    """Training loss vs step for each method on one axis."""
    fig, ax = _figure()
    return _write(fig, path, lambda: draw_elbo_trace(ax, histories, window))


def _scale_rows(rows: Sequence[Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(label, posterior scale, prior scale) tuples, or ScaleRow-like objects with site/posterior_scale/prior_scale."""
    _nonempty(rows, "rows")
    triples = [(r.site, r.posterior_scale, r.prior_scale) if hasattr(r, "posterior_scale") else tuple(r)
               for r in rows]
    if any(len(t) != 3 for t in triples):
        raise ValueError("rows must be (label, posterior_scale, prior_scale); got an entry of another length")
    labels, post, prior = zip(*triples)
    post, prior = np.asarray(post, dtype=np.float64), np.asarray(prior, dtype=np.float64)
    if not (np.isfinite(post).all() and np.isfinite(prior).all() and (post > 0).all() and (prior > 0).all()):
        raise ValueError("scales must be finite and > 0 for a log axis; got a zero, negative or non-finite one")
    return [str(label) for label in labels], post, prior


def draw_scale_forest(ax: Axes, rows: Sequence[Any]) -> Axes:
    """Per-site posterior scale (dots) and prior scale (bars) joined by a line, on a log x-axis."""
    labels, post, prior = _scale_rows(rows)
    y = np.arange(len(labels))
    ax.hlines(y, np.minimum(post, prior), np.maximum(post, prior), color="tab:gray", linewidth=0.8)
    ax.scatter(prior, y, color="tab:gray", marker="|", s=200, zorder=2, label="prior scale")
    ax.scatter(post, y, color="tab:blue", zorder=3, label="posterior scale (mean over entries)")
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first row on top
    ax.set_xscale("log")
    ax.set(xlabel="standard deviation (log scale)", title="Posterior vs prior scale per site")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: rows fill the axes
    return ax


def scale_forest(rows: Sequence[Any], path: str | Path) -> Path:
    """Forest plot of per-layer posterior scale against prior scale; ``rows`` of (label, post, prior)."""
    fig, ax = _figure(9.0, max(3.0, 0.24 * len(rows) + 1.4))
    return _write(fig, path, lambda: draw_scale_forest(ax, rows))


def draw_accuracy_over_rounds(ax: Axes, curves: Mapping[str, Sequence[float]], xlabel: str = "round",
                              ylabel: str = "accuracy", title: str = "Accuracy over rounds",
                              errors: Mapping[str, Sequence[float]] | None = None) -> Axes:
    """Accuracy after each round (1, 2, ...) per method, one line with markers each; ``errors[name]`` (e.g. the
    sd over seeds) draws error bars of that half-length, slightly offset per method so they do not overlap."""
    _nonempty(curves, "curves")
    errors = errors or {}
    for i, (name, acc) in enumerate(curves.items()):
        x = np.arange(1, len(acc) + 1) + (0.04 * (i - (len(curves) - 1) / 2) if errors else 0.0)
        if name in errors:
            ax.errorbar(x, acc, yerr=errors[name], marker="o", color=_color(i), label=name, capsize=3)
        else:
            ax.plot(x, acc, marker="o", color=_color(i), label=name)
    ax.set_xticks(np.arange(1, max(len(a) for a in curves.values()) + 1))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return ax


def accuracy_over_rounds(curves: Mapping[str, Sequence[float]], path: str | Path, xlabel: str = "round",
                         ylabel: str = "accuracy", title: str = "Accuracy over rounds",
                         errors: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Accuracy curves across rounds (e.g. forgetting in continual updates) for each method, with error bars
    ``errors`` (e.g. the sd over seeds) where given."""
    fig, ax = _figure()
    return _write(fig, path, lambda: draw_accuracy_over_rounds(ax, curves, xlabel, ylabel, title, errors))


def posterior_forest(idata: Any, path: str | Path, var_names: Sequence[str]) -> Path:
    """ArviZ forest plot (94% HDI and interquartile range per variable) of ``var_names`` in ``idata``."""
    import arviz as az

    _nonempty(var_names, "var_names")
    fig, ax = _figure(8.0, max(3.0, 0.28 * len(var_names) + 1.2))
    def draw() -> None:
        az.plot_forest(idata, var_names=list(var_names), combined=True, ax=ax, textsize=7)
        ax.set_title("Posterior per variable (ArviZ forest: 94% HDI, IQR, median)")

    return _write(fig, path, draw)


def posterior_densities(idata: Any, path: str | Path, var_names: Sequence[str]) -> Path:
    """ArviZ posterior densities (with 94% HDI), one panel per scalar entry of ``var_names`` (at most 8)."""
    import arviz as az

    _nonempty(var_names, "var_names")
    panels = sum(int(np.prod(idata.posterior[v].shape[2:])) for v in var_names)
    if panels > 8:
        raise ValueError(f"{', '.join(var_names)} have {panels} entries; pass variables with at most 8 in all")
    fig, axes = _panels(panels, height=3.2)
    def draw() -> None:
        az.plot_posterior(idata, var_names=list(var_names), ax=axes, textsize=8)

    return _write(fig, path, draw)

