"""Figures a person would rather look at than a table. Each writes a PNG atomically and returns its path.

``results`` arguments map a method name to ``(probs, labels)``; colours stay fixed per method order.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import metrics  # noqa: E402

__all__ = ["reliability_diagram", "confidence_histogram", "accuracy_coverage", "uncertainty_histogram",
           "elbo_trace", "scale_forest", "accuracy_over_rounds"]

COLORS = plt.get_cmap("tab10").colors
Results = Mapping[str, tuple]


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a figure is for reading
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def reliability_diagram(results: Results, path, n_bins: int = 15) -> Path:
    """One panel per method: accuracy per confidence bin against the diagonal, the gap shaded."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2), squeeze=False)
    for ax, (i, (name, (probs, labels))) in zip(axes[0], enumerate(results.items())):
        b = metrics.reliability_bins(probs, labels, n_bins)
        centers, width = (b.edges[:-1] + b.edges[1:]) / 2, 1.0 / n_bins
        keep = b.counts > 0
        ax.bar(centers[keep], b.accuracy[keep], width=width, color=COLORS[i % 10], edgecolor="black",
               linewidth=0.5, label="accuracy")
        low = np.minimum(b.accuracy[keep], b.confidence[keep])
        ax.bar(centers[keep], np.abs(b.confidence[keep] - b.accuracy[keep]), bottom=low, width=width,
               color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{name}\nECE {metrics.ece(probs, labels, n_bins):.2f}%")
        ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def confidence_histogram(results: Results, path, n_bins: int = 15) -> Path:
    """Distribution of top-class confidence per method, with mean confidence and accuracy marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, n_bins + 1)
    for i, (name, (probs, labels)) in enumerate(results.items()):
        conf = np.asarray(probs).max(1)
        ax.hist(conf, bins=bins, alpha=0.45, color=COLORS[i % 10], label=f"{name} (mean {conf.mean():.2f}, "
                f"acc {metrics.accuracy(probs, labels):.2f})")
    ax.set(xlabel="confidence (max probability)", ylabel="examples", title="Confidence histogram")
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_coverage(results: Results, path) -> Path:
    """Accuracy on the kept examples as the most uncertain ones are set aside."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, (probs, labels)) in enumerate(results.items()):
        coverage, acc = metrics.accuracy_coverage_curve(probs, labels)
        ax.plot(coverage, acc, color=COLORS[i % 10], label=f"{name} (AUC {acc.mean():.3f})")
    ax.set(xlabel="coverage (fraction kept)", ylabel="accuracy on kept", xlim=(0, 1),
           title="Selective prediction: accuracy vs coverage")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    return _save(fig, path)


def uncertainty_histogram(in_scores: Mapping[str, np.ndarray], out_scores: Mapping[str, np.ndarray], path,
                          xlabel: str = "predictive entropy (nats)") -> Path:
    """In- vs out-of-distribution uncertainty per method, with the OOD AUROC in each title."""
    names = list(in_scores)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        a, b = np.asarray(in_scores[name]), np.asarray(out_scores[name])
        bins = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()) + 1e-9, 30)
        ax.hist(a, bins=bins, alpha=0.5, color="tab:blue", label="in-distribution", density=True)
        ax.hist(b, bins=bins, alpha=0.5, color="tab:orange", label="out-of-distribution", density=True)
        ax.set(xlabel=xlabel, ylabel="density", title=f"{name}\nOOD AUROC {metrics.ood_auroc(a, b):.3f}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def elbo_trace(histories: Mapping[str, Sequence[float]], path, window: int = 20) -> Path:
    """Training loss (-ELBO per example) per step: raw, faint, and a moving average."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, loss) in enumerate(histories.items()):
        loss = np.asarray(loss, dtype=float)
        ax.plot(loss, color=COLORS[i % 10], alpha=0.25, linewidth=0.8)
        if len(loss) >= window:
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window - 1, len(loss)), smooth, color=COLORS[i % 10], label=name)
        else:
            ax.plot(loss, color=COLORS[i % 10], label=name)
    ax.set(xlabel="step", ylabel="loss per example (-ELBO / N)", title="Training loss")
    ax.set_yscale("symlog")
    ax.legend(fontsize=8)
    return _save(fig, path)


def scale_forest(rows: Sequence[tuple[str, float, float]], path) -> Path:
    """Per-site posterior scale (dots) against the prior scale (bars), log x-axis."""
    fig, ax = plt.subplots(figsize=(7, max(3, 0.22 * len(rows) + 1)))
    y = np.arange(len(rows))
    labels, post, prior = zip(*rows) if rows else ((), (), ())
    ax.scatter(post, y, color="tab:blue", zorder=3, label="posterior scale (mean)")
    ax.scatter(prior, y, color="tab:gray", marker="|", s=200, zorder=2, label="prior scale")
    for yi, a, b in zip(y, post, prior):
        ax.plot([a, b], [yi, yi], color="tab:gray", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set(xlabel="standard deviation", title="What each site learned: posterior vs prior scale")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def accuracy_over_rounds(curves: Mapping[str, Sequence[float]], path, xlabel: str = "round") -> Path:
    """Accuracy on one fixed test set after each round, per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, acc) in enumerate(curves.items()):
        ax.plot(np.arange(1, len(acc) + 1), acc, marker="o", color=COLORS[i % 10], label=name)
    ax.set(xlabel=xlabel, ylabel="accuracy on round-1 test data", title="Forgetting across rounds")
    ax.set_xticks(np.arange(1, max(len(a) for a in curves.values()) + 1))
    ax.legend(fontsize=8)
    return _save(fig, path)
