"""Regression: BH-PEFT against deterministic LoRA on human sentiment ratings (VADER movie snippets).

One protocol for every method (fixed before any result was seen): the packaged MiniLM, 1,000 random
training snippets of ``vader-movie`` (rating in [-4, 4]), 2 epochs, batch 16, Adam lr 2e-3, 64 tokens,
a Normal likelihood with a learned noise scale; 500 random test snippets; 8 posterior samples; seeds
0-2. Metrics: MSE, Gaussian NLL of the predictive (mean, aleatoric + epistemic variance) and the share
of test ratings inside the central 90 % predictive interval. Each (method, seed) cell is saved as it
finishes, so the run resumes.

    python benchmarks/regression.py --out docs/regression        # ~40 min on one core
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pyro_bhpeft.analysis import metrics, plots
from pyro_bhpeft.analysis.tables import markdown_table
from pyro_bhpeft.compare import Bench, Protocol
from pyro_bhpeft.data import load_task
from pyro_bhpeft.io import write_json, write_text
from pyro_bhpeft.predict import predict
from pyro_bhpeft.recipe import PRESETS

METHODS = {  # name -> (recipe changes to Protocol.recipe, posterior samples)
    "lora": ({}, 0),
    "bayes-lora-fs": (dict(PRESETS["bayes-lora-fs"]), 8),
    "bayes-lora-fs-mean": (dict(PRESETS["bayes-lora-fs"]), 0),  # the same fit, predicting with its mean
    "bh-peft-fs": (dict(PRESETS["bh-peft-fs"]), 8),
    "bh-peft-fs-mean": (dict(PRESETS["bh-peft-fs"]), 0),
}
COLUMNS = (("MSE", "mse", 3), ("Gaussian NLL", "nll", 3), ("90% coverage %", "coverage90", 1), ("MAE", "mae", 3))


def run_cell(bench: Bench, out: Path, method: str, seed: int) -> dict:
    path = out / "cells" / f"{method}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    changes, samples = METHODS[method]
    print(f"\n== {method}, seed {seed} ==", flush=True)
    posterior, facts = bench.fitted(bench.protocol.recipe(seed, **changes))
    pred = predict(posterior, bench.eval_loaders["test"], num_samples=samples, seed=seed)
    result = {**metrics.regression_metrics(pred.mean.numpy(), pred.variance.numpy(), pred.labels.numpy()),
              "train_seconds": facts["seconds"], "epistemic_share": float((pred.epistemic / pred.variance).mean())}
    result["coverage90"] *= 100
    write_json(path, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/regression"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    args = parser.parse_args()
    protocol = Protocol(task="vader-movie", train_size=1000, eval_size=500, epochs=2, ood_task="")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "protocol.json", protocol.__dict__)
    bench = Bench(protocol, args.out, load_task("vader-movie"), None, progress=True)
    cells = {m: [run_cell(bench, args.out, m, s) for s in range(args.seeds)] for m in args.methods.split(",")}
    rows = []
    for method, found in cells.items():
        row = [method, str(len(found))]
        for _, key, digits in COLUMNS:
            values = [c[key] for c in found]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            row.append(f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}")
        row.append(f"{statistics.fmean(c['epistemic_share'] for c in found):.3f}")
        rows.append(row)
    table = markdown_table(["method", "seeds", *(c for c, _, _ in COLUMNS), "epistemic share of variance"], rows)
    fig = Figure(figsize=(10, 3.2))
    for ax, (title, key, _) in zip(fig.subplots(1, 3), COLUMNS[:3]):
        means = [statistics.fmean(c[key] for c in cells[m]) for m in cells]
        sds = [statistics.stdev([c[key] for c in cells[m]]) if args.seeds > 1 else 0 for m in cells]
        ax.bar(np.arange(len(cells)), means, yerr=sds, color=[f"C{i}" for i in range(len(cells))])
        ax.set_xticks(np.arange(len(cells)), list(cells), rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        if key == "coverage90":
            ax.axhline(90, color="k", linestyle="--", linewidth=1)
    fig.tight_layout()
    plots.save(fig, args.out / "regression.png")
    ran = f"This run: seeds {', '.join(map(str, range(args.seeds)))}; methods {', '.join(cells)}."
    write_text(args.out / "regression.md", f"# {__doc__.splitlines()[0]}\n\n{__doc__.split(chr(10) * 2)[1]}\n\n"
               f"{ran}\n\n{table}\n\n![regression](regression.png)\n")
    print(table)


if __name__ == "__main__":
    main()
