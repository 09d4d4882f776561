"""Predictive modes on the sentiment protocol: cost against one deterministic forward, and what each keeps.

Settings, fixed before any number was seen: the committed sentiment protocol (``docs/compare/sentiment``:
packaged MiniLM, 1,000 training snippets, 2 epochs, batch 16, lr 2e-3, 64 tokens, 500 SST-2 test
sentences, 500 R8 news items as the OOD set), seeds 0-2. Three fits per seed: deterministic LoRA; the
library's mean-field hybrid recipe (``Recipe(guide="mean-field", peft=hybrid)``: every PEFT weight and the
head random); and the same with variance only in the top 2 of MiniLM's 6 blocks and the head
(``random_blocks=2``). Modes, each on the same test and OOD batches:

- ``sample K=8``: the full sampler, 8 posterior draws (the reference);
- ``mean``: the posterior mean, one forward (the cost baseline: a deterministic model);
- ``closed form (own head)``: one forward at the mean PEFT weights, the run's own head posterior in closed
  form (probit + Laplace bridge; :mod:`pyro_bhpeft.closed_form`); only for runs with a random head;
- ``closed form (last-layer Laplace)``: the same with a diagonal last-layer Laplace head fitted on the
  training data, its prior precision chosen on validation NLL from (0.1, 1, 10, 100);
- ``shared trunk K=8``: the full sampler's 8 draws with the blocks below the first random one run once
  (:mod:`pyro_bhpeft.trunk`); only for the ``random_blocks`` fit.

Cost is the median over interleaved rounds of each mode's time on the test set divided by the ``mean``
mode's, in one process. Metrics: test accuracy, NLL, ECE, and the OOD AUROC of predictive entropy.

    python benchmarks/predict_modes.py --out docs/scaling/predict_modes     # writes .json, .md; resumable by seed
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pyro_bhpeft import PeftConfig, predict
from pyro_bhpeft.analysis import metrics
from pyro_bhpeft.analysis.tables import markdown_table
from pyro_bhpeft.closed_form import closed_form_predict, last_layer_laplace
from pyro_bhpeft.compare.bench import Bench
from pyro_bhpeft.compare.protocol import Protocol
from pyro_bhpeft.data import load_task
from pyro_bhpeft.io import write_json, write_text
from pyro_bhpeft.recipe import train
from pyro_bhpeft.trunk import shared_trunk_predict

PRECISIONS = (0.1, 1.0, 10.0, 100.0)
ROUNDS = 3


def fits(protocol: Protocol, seed: int) -> dict[str, Any]:
    hybrid = {"guide": "mean-field", "peft": PeftConfig.hybrid()}
    return {"lora": protocol.recipe(seed), "mean-field hybrid": protocol.recipe(seed, **hybrid),
            "mean-field hybrid, top 2 blocks": protocol.recipe(seed, **hybrid, random_blocks=2)}


def laplace_head(posterior, bench: Bench):
    """The last-layer Laplace head whose prior precision gives the lowest validation NLL."""
    train_loader = bench.train_loader(0)
    scored = {}
    for precision in PRECISIONS:
        head = last_layer_laplace(posterior, train_loader, prior_precision=precision)
        pred = closed_form_predict(posterior, bench.eval_loaders["validation"], head=head)
        scored[precision] = (metrics.nll(pred.probs.numpy(), pred.labels.numpy()), head)
    best = min(scored, key=lambda p: scored[p][0])
    return best, scored[best][1]


def modes(posterior, bench: Bench, recipe) -> tuple[dict[str, Callable], dict[str, Any]]:
    out: dict[str, Callable] = {"mean": lambda loader: predict(posterior, loader, num_samples=0)}
    facts: dict[str, Any] = {}
    if recipe.guide != "mle":
        out["sample K=8"] = lambda loader: predict(posterior, loader, num_samples=8, seed=0)
        out["closed form (own head)"] = lambda loader: closed_form_predict(posterior, loader)
    if recipe.random_blocks:
        out["shared trunk K=8"] = lambda loader: shared_trunk_predict(posterior, loader, num_samples=8, seed=0)
    precision, head = laplace_head(posterior, bench)
    facts["laplace_prior_precision"] = precision
    out["closed form (last-layer Laplace)"] = lambda loader: closed_form_predict(posterior, loader, head=head)
    return out, facts


def measure(fns: dict[str, Callable], bench: Bench) -> dict[str, dict[str, float]]:
    test, ood = bench.eval_loaders["test"], bench.eval_loaders["ood"]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):  # interleaved, so drift hits every mode alike
        for name, fn in fns.items():
            tick = time.perf_counter()
            fn(test)
            times[name].append(time.perf_counter() - tick)
    base = statistics.median(times["mean"])
    rows = {}
    for name, fn in fns.items():
        pred, out = fn(test), fn(ood)
        m = metrics.classification_metrics(pred.probs.numpy(), pred.labels.numpy())
        rows[name] = {"cost": statistics.median(times[name]) / base, "accuracy": m["accuracy"], "nll": m["nll"],
                      "ece": m["ece"], "ood_auroc": metrics.ood_auroc(pred.predictive_entropy.numpy(),
                                                                      out.predictive_entropy.numpy())}
    return rows


def run_seed(protocol: Protocol, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    bench = Bench(protocol, Path("/tmp/predict-modes"), load_task(protocol.task), load_task(protocol.ood_task),
                  progress=False)
    out = {}
    for name, recipe in fits(protocol, seed).items():
        result = train(recipe, bench.data, progress=False)
        fns, facts = modes(result.posterior, bench, recipe)
        out[name] = {"modes": measure(fns, bench), **facts}
        print(f"seed {seed} {name}: " + ", ".join(f"{m} x{r['cost']:.2f} NLL {r['nll']:.3f}"
                                                  for m, r in out[name]["modes"].items()), flush=True)
    return out


def table(cells: dict[str, Any]) -> str:
    seeds = sorted(cells)
    lines = []
    for fit in cells[seeds[0]]:
        for mode in cells[seeds[0]][fit]["modes"]:
            vals = {k: [cells[s][fit]["modes"][mode][k] for s in seeds] for k in ("cost", "accuracy", "nll", "ece",
                                                                              "ood_auroc")}
            fmt = lambda k, scale=1.0, d=3: f"{np.mean(vals[k]) * scale:.{d}f} ± {np.std(vals[k]) * scale:.{d}f}"  # noqa
            lines.append([fit, mode, fmt("cost", d=2), fmt("accuracy", 100, 2), fmt("nll"), fmt("ece", 1.0, 2),
                          fmt("ood_auroc")])
    return markdown_table(["fit", "mode", "cost (x mean forward)", "accuracy %", "NLL", "ECE %", "OOD AUROC"], lines)


def figure(cells: dict[str, Any], path: str) -> None:
    """Test NLL against cost (x a mean forward), one marker per fit and mode, error bars over seeds."""
    from matplotlib.figure import Figure

    from pyro_bhpeft.analysis import plots

    seeds = sorted(cells)
    fig = Figure(figsize=(11, 4.4))
    ax = fig.add_subplot()
    markers = dict(zip(cells[seeds[0]], "os^"))
    for i, fit in enumerate(cells[seeds[0]]):
        for j, mode in enumerate(cells[seeds[0]][fit]["modes"]):
            cost = [cells[s][fit]["modes"][mode]["cost"] for s in seeds]
            nll = [cells[s][fit]["modes"][mode]["nll"] for s in seeds]
            ax.errorbar(np.mean(cost), np.mean(nll), xerr=np.std(cost), yerr=np.std(nll), fmt=markers[fit],
                        color=plots.COLORS[j % len(plots.COLORS)], label=f"{fit}: {mode}", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("prediction cost (x one deterministic forward, log scale)")
    ax.set_ylabel("test NLL (sentiment, SST-2)")
    ax.set_title(f"Predictive modes, seeds {', '.join(seeds)} (mean ± sd)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    plots.save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/scaling/predict_modes")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    protocol = Protocol.read("docs/compare/sentiment")
    cells_file = Path(f"{args.out}.json")
    cells = json.loads(cells_file.read_text()) if cells_file.exists() else {}
    for seed in range(args.seeds):
        if str(seed) not in cells:
            cells[str(seed)] = run_seed(protocol, seed)
            write_json(cells_file, cells)  # each seed kept as soon as it is done
    write_text(f"{args.out}.md", f"Seeds {', '.join(sorted(cells))}; mean ± sd over seeds. Command: "
                                 f"`python benchmarks/predict_modes.py --out {args.out}`\n\n{table(cells)}\n")
    figure(cells, f"{args.out}.png")
    print(table(cells))


if __name__ == "__main__":
    main()
