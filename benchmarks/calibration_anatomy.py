"""Where does a method's calibration come from? Read off finished comparison cells, no refit.

For each method and seed of each comparison directory: test accuracy, mean confidence (the top class's
probability), over-confidence (confidence minus accuracy), ECE, and the mutual information between the
prediction and the weights (how much the posterior's draws disagree; 0 for one deterministic pass). A model
whose accuracy is at chance is calibrated only when its confidence falls to chance too, so there the ECE is
mostly the over-confidence.

Where a sampled method has a posterior-mean twin that shares its fit (``blob`` / ``blob-mean``,
``bayes-lora-fs`` / ``bayes-lora-fs-mean``), its ECE change against deterministic LoRA splits into the part
of its mean function (mean twin minus LoRA) and the part of averaging its draws (sampled minus mean twin),
over the seeds both have.

    python benchmarks/calibration_anatomy.py docs/compare/winogrande-s docs/compare/arc-easy \
        docs/compare/openbookqa docs/compare/arc-challenge --out docs/compare/calibration-anatomy-smollm2.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lab_methods, beside this script

import lab_methods  # noqa: F401  (blob-mean and the other ablations, in their registry places)
from pyro_bhpeft.compare import METHODS
from pyro_bhpeft.compare.cells import is_done, load_arrays, load_metrics
from pyro_bhpeft.compare.report import mean_sd
from pyro_bhpeft.io import write_text

TWINS = {"blob": "blob-mean", "bayes-lora-fs": "bayes-lora-fs-mean"}
BASELINE = "lora"


def cells(comparison: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {seed: row}}`` for every finished cell, in the registry's order."""
    found: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted((comparison / "cells").glob("*-seed*")):
        method, seed = path.name.rsplit("-seed", 1)
        if not is_done(comparison, method, int(seed)):
            continue
        metrics, probs = load_metrics(comparison, method, int(seed)), load_arrays(comparison, method, int(seed))["test_probs"]
        found.setdefault(method, {})[int(seed)] = {
            "accuracy": 100 * metrics["accuracy"], "confidence": 100 * float(probs.max(1).mean()),
            "ece": metrics["ece"], "mi": metrics.get("mutual_information", 0.0)}
    order = [m for m in METHODS if m in found] + sorted(m for m in found if m not in METHODS)
    return {m: found[m] for m in order}


def _mean_sd(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.2f} ± {sd:.2f}" if len(values) > 1 else f"{mean:.2f}"


def anatomy(comparison: Path) -> str:
    """The markdown section of one comparison directory."""
    found = cells(comparison)
    lines = [f"## `{comparison.name}`", "",
             "| method | seeds | accuracy % | confidence % | over-confidence (pts) | ECE % | MI (nats) |",
             "|---|---|---|---|---|---|---|"]
    for method, seeds in found.items():
        rows = list(seeds.values())
        col = {k: [r[k] for r in rows] for k in rows[0]}
        over = [r["confidence"] - r["accuracy"] for r in rows]
        lines.append(f"| {method} | {len(rows)} | {_mean_sd(col['accuracy'])} | {_mean_sd(col['confidence'])} | "
                     f"{_mean_sd(over)} | {_mean_sd(col['ece'])} | {np.mean(col['mi']):.4f} |")
    split = []
    for sampled, mean in TWINS.items():
        if BASELINE not in found or sampled not in found or mean not in found:
            continue
        shared = sorted(set(found[sampled]) & set(found[mean]) & set(found[BASELINE]))
        if not shared:
            continue
        ece = {m: np.mean([found[m][s]["ece"] for s in shared]) for m in (BASELINE, mean, sampled)}
        split.append(f"| {sampled} | {len(shared)} | {ece[sampled] - ece[BASELINE]:+.2f} | "
                     f"{ece[mean] - ece[BASELINE]:+.2f} | {ece[sampled] - ece[mean]:+.2f} |")
    if split:
        lines += ["", f"ECE change against `{BASELINE}` (points, mean over the seeds all three share), split "
                  "into the mean function's part and the draws' part:", "",
                  "| method | seeds | Δ ECE | of it: mean function | of it: averaging the draws |",
                  "|---|---|---|---|---|", *split]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comparisons", nargs="+", type=Path, help="comparison directories (with cells/)")
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = parser.parse_args()
    missing = [str(c) for c in args.comparisons if not (c / "cells").is_dir()]
    if missing:
        parser.error(f"no cells/ under {', '.join(missing)}: give directories written by pyro-bhpeft compare")
    text = "\n\n".join(["# Calibration anatomy", "Made by `python benchmarks/calibration_anatomy.py "
                        + " ".join(str(c) for c in args.comparisons) + "`: test examples; confidence is the top "
                        "class's probability; MI is the mutual information between prediction and weights."]
                       + [anatomy(c) for c in args.comparisons]) + "\n"
    print(text)
    if args.out is not None:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
