"""Exploratory, from committed cells only (no fit): what variance scaling would do on top of each Gaussian method of
the suite's regression task. The factor is the closed-form maximiser of the validation Gaussian likelihood,
``mean((y - mean)^2 / variance)`` on the validation split (as ``temperature`` does for LoRA), applied to the test
predictive variance; the test Gaussian NLL and 90 % coverage before and after, per seed.

Not a candidate of the suite's rule: the factor is fitted on the validation split the rule reads (as `temperature`'s,
which the rule declares not eligible), and the idea came after the cells were seen.

    python benchmarks/suite_scaled.py docs/suite/vader-minilm
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

Z90 = 1.6448536269514722  # the central 90 % interval of a Gaussian: mean +- Z90 sd


def gaussian_nll(y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> float:
    return float(np.mean(0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var)))


def coverage90(y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> float:
    return float(np.mean(np.abs(y - mean) <= Z90 * np.sqrt(var)))


def scaled(cell: Path) -> dict[str, float]:
    """One cell's factor and its test NLL and coverage before and after scaling."""
    d = np.load(cell / "predictions.npz")
    factor = float(np.mean((d["validation_labels"] - d["validation_mean"]) ** 2 / d["validation_variance"]))
    y, mean, var = d["test_labels"], d["test_mean"], d["test_variance"]
    return {"factor": factor, "nll": gaussian_nll(y, mean, var), "nll_scaled": gaussian_nll(y, mean, factor * var),
            "coverage": coverage90(y, mean, var), "coverage_scaled": coverage90(y, mean, factor * var)}


def main() -> None:
    task = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/suite/vader-minilm")
    methods = sorted({p.name.rsplit("-seed", 1)[0] for p in (task / "cells").glob("*-seed*")})
    print("| method | factor | test NLL | scaled, per seed | scaled mean | 90% coverage % | scaled |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        if method == "temperature":  # already lora's variance, scaled
            continue
        rows = [scaled(c) for c in sorted((task / "cells").glob(f"{method}-seed*")) if c.name.rsplit("-seed", 1)[0] == method]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        per_seed = " / ".join(f"{r['nll_scaled']:.3f}" for r in rows)
        print(f"| {method} | {mean['factor']:.2f} | {mean['nll']:.3f} | {per_seed} | {mean['nll_scaled']:.3f} | "
              f"{100 * mean['coverage']:.1f} | {100 * mean['coverage_scaled']:.1f} |")


if __name__ == "__main__":
    main()
