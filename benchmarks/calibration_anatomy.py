"""Where does a method's calibration come from? Read off finished comparison cells, no refit.

For each method and seed of each comparison directory: test accuracy, mean confidence (the top class's
probability), over-confidence (confidence minus accuracy), ECE, and the mutual information between the
prediction and the weights (how much the posterior's draws disagree; 0 for one deterministic pass). A model
whose accuracy is at chance is calibrated only when its confidence falls to chance too, so there the ECE is
mostly the over-confidence.

Where a sampled method has a posterior-mean twin that shares its fit (``blob`` / ``blob-mean``,
``bayes-lora-fs`` / ``bayes-lora-fs-mean``, ``mean-field-lora`` / ``mean-field-lora-mean``), its ECE, NLL and
accuracy changes against deterministic LoRA split into the part of its mean function (mean twin minus LoRA) and
the part of averaging its draws (sampled minus mean twin), over the seeds all three have.

    python benchmarks/calibration_anatomy.py docs/compare/winogrande-s docs/compare/arc-easy \
        docs/compare/openbookqa docs/compare/arc-challenge --out docs/compare/calibration-anatomy-smollm2.md

``--twins DIR`` also reads the cells of ``DIR/<name>`` for each comparison ``<name>``: twins run beside a
comparison whose folder should hold only its own methods (the suite's), sharing its fits through a link.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lab_methods, beside this script

import lab_methods  # noqa: F401  (blob-mean and the other ablations, in their registry places)
from pyro_bhpeft.compare import METHODS
from pyro_bhpeft.compare.cells import is_done, load_arrays, load_metrics
from pyro_bhpeft.compare.report import mean_sd
from pyro_bhpeft.io import write_text
from pyro_bhpeft.recipe import Recipe

TWINS = {"blob": "blob-mean", "bayes-lora-fs": "bayes-lora-fs-mean", "mean-field-lora": "mean-field-lora-mean"}
BASELINE = "lora"


def cells(*comparisons: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{method: {seed: row}}`` for every finished cell of the folders, in the registry's order."""
    found: dict[str, dict[int, dict[str, float]]] = {}
    for comparison in comparisons:
        for path in sorted((comparison / "cells").glob("*-seed*")):
            method, seed = path.name.rsplit("-seed", 1)
            if not is_done(comparison, method, int(seed)):
                continue
            metrics = load_metrics(comparison, method, int(seed))
            probs = load_arrays(comparison, method, int(seed))["test_probs"]
            found.setdefault(method, {})[int(seed)] = {
                "accuracy": 100 * metrics["accuracy"], "confidence": 100 * float(probs.max(1).mean()),
                "ece": metrics["ece"], "mi": metrics.get("mutual_information", 0.0), "nll": metrics["nll"],
                "ood_auroc": metrics.get("ood_auroc")}
    return {m: found[m] for m in sorted(found, key=_registry_order)}


def _registry_order(method: str) -> tuple[int, str]:
    """The registry's order, then unregistered methods by name."""
    return (list(METHODS).index(method), "") if method in METHODS else (len(METHODS), method)


def scales(*comparisons: Path) -> dict[str, dict[str, Any]]:
    """``{method: facts}`` of the posterior scales its cells saved (``scales.json``): the median over seeds of
    the median over sites, the range over every site and seed, the prior's median scale, and the scale the fit
    started from (its recipe's ``initial_scale``)."""
    found: dict[str, dict[str, Any]] = {}
    for comparison in comparisons:
        for path in sorted((comparison / "cells").glob("*-seed*/scales.json")):
            method = path.parent.name.rsplit("-seed", 1)[0]
            rows = json.loads(path.read_text())
            settings = json.loads((path.parent / "metrics.json").read_text()).get("method_settings", {})
            facts = found.setdefault(method, {"medians": [], "all": [], "prior": [], "start": None})
            facts["medians"].append(statistics.median(r["posterior_scale"] for r in rows))
            facts["all"] += [r["posterior_scale"] for r in rows]
            facts["prior"] += [r["prior_scale"] for r in rows]
            if settings.get("base_fit") is not None and settings.get("post_hoc") is None:  # else: set after the fit
                facts["start"] = Recipe(**settings["base_fit"]).initial_scale
    return {m: found[m] for m in sorted(found, key=_registry_order)}


def scale_lines(comparison: Path, *twins: Path) -> list[str]:
    """The markdown table of :func:`scales` (empty when no cell saved its scales)."""
    found = scales(comparison, *twins)
    if not found:
        return []
    lines = ["", "Posterior scales (the cells' `scales.json`; medians over each seed's sites, then over seeds; "
             "\"grew\" is that median over the scale the fit started from):", "",
             "| method | seeds | start | posterior scale | range over sites | grew | prior scale |",
             "|---|---|---|---|---|---|---|"]
    for method, facts in found.items():
        start, median = facts["start"], statistics.median(facts["medians"])
        start_text = "–" if start is None else (f"{start[0]:.3g}-{start[1]:.3g}" if isinstance(start, tuple)
                                                else f"{start:.3g}")
        grew = f"{median / start:.2f}x" if isinstance(start, float) else "–"
        lines.append(f"| {method} | {len(facts['medians'])} | {start_text} | {median:.3g} | "
                     f"{min(facts['all']):.3g}-{max(facts['all']):.3g} | {grew} | "
                     f"{statistics.median(facts['prior']):.3g} |")
    return lines


def _mean_sd(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.2f} ± {sd:.2f}" if len(values) > 1 else f"{mean:.2f}"


def anatomy(comparison: Path, *twins: Path, with_scales: bool = False) -> str:
    """The markdown section of one comparison directory (and the twin cells run beside it in ``twins``);
    ``with_scales``: also the posterior scales its cells saved."""
    found = cells(comparison, *twins)
    lines = [f"## `{comparison.name}`", "",
             "| method | seeds | accuracy % | confidence % | over-confidence (pts) | ECE % | MI (nats) |",
             "|---|---|---|---|---|---|---|"]
    for method, seeds in found.items():
        rows = list(seeds.values())
        col = {k: [r[k] for r in rows] for k in rows[0]}
        over = [r["confidence"] - r["accuracy"] for r in rows]
        lines.append(f"| {method} | {len(rows)} | {_mean_sd(col['accuracy'])} | {_mean_sd(col['confidence'])} | "
                     f"{_mean_sd(over)} | {_mean_sd(col['ece'])} | {np.mean(col['mi']):.4f} |")
    split, metrics = [], [("ece", 2), ("nll", 3), ("accuracy", 2)]
    if all(r["ood_auroc"] is not None for seeds in found.values() for r in seeds.values()):
        metrics.append(("ood_auroc", 3))  # detecting the OOD set by predictive entropy: whose part is the change?
    for sampled, mean in TWINS.items():
        if BASELINE not in found or sampled not in found or mean not in found:
            continue
        shared = sorted(set(found[sampled]) & set(found[mean]) & set(found[BASELINE]))
        if not shared:
            continue
        row = f"| {sampled} | {len(shared)} |"
        for metric, digits in metrics:
            at = {m: np.mean([found[m][s][metric] for s in shared]) for m in (BASELINE, mean, sampled)}
            row += (f" {at[sampled] - at[BASELINE]:+.{digits}f} | {at[mean] - at[BASELINE]:+.{digits}f} |"
                    f" {at[sampled] - at[mean]:+.{digits}f} |")
        split.append(row)
    if split:
        lines += ["", f"Changes against `{BASELINE}` (ECE and accuracy in points, mean over the seeds all three "
                  "share), each split into the mean function's part (the posterior-mean twin minus LoRA) and the "
                  "draws' part (the sampled method minus its twin):", "",
                  "| method | seeds | Δ ECE | mean function | averaging | Δ NLL | mean function "
                  "| averaging | Δ accuracy | mean function | averaging |"
                  + (" Δ OOD AUROC | mean function | averaging |" if len(metrics) > 3 else ""),
                  "|---|---|" + "---|---|---|" * len(metrics), *split]
    return "\n".join(lines + (scale_lines(comparison, *twins) if with_scales else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comparisons", nargs="+", type=Path, help="comparison directories (with cells/)")
    parser.add_argument("--twins", type=Path, help="a folder of twin comparisons, one per comparison's name")
    parser.add_argument("--scales", action="store_true", help="also the posterior scales the cells saved")
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = parser.parse_args()
    missing = [str(c) for c in args.comparisons if not (c / "cells").is_dir()]
    if missing:
        parser.error(f"no cells/ under {', '.join(missing)}: give directories written by pyro-bhpeft compare")
    twins = {c: [args.twins / c.name] if args.twins and (args.twins / c.name / "cells").is_dir() else []
             for c in args.comparisons}
    command = " ".join(str(c) for c in args.comparisons) + (f" --twins {args.twins}" if args.twins else "") + (
        " --scales" if args.scales else "")
    text = "\n\n".join(["# Calibration anatomy", f"Made by `python benchmarks/calibration_anatomy.py {command}`: "
                        "test examples; confidence is the top class's probability; MI is the mutual information "
                        "between prediction and weights."]
                       + [anatomy(c, *twins[c], with_scales=args.scales) for c in args.comparisons]) + "\n"
    print(text)
    if args.out is not None:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
