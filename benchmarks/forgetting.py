"""Forgetting across rounds: posterior-as-prior vs naive sequential fine-tuning vs joint refit.

A stream of sentiment domains with a real shift (VADER ratings by sign): movie snippets, then
Amazon reviews, then tweets. Every method sees the same rounds, backbone (packaged MiniLM), LoRA
r=8 on query/value, steps, batch size, learning rate and seeds:

* ``posterior-prior (mean-field)`` / ``(low-rank)``: round k's prior is round k-1's posterior;
* ``naive sequential``: a point estimate with no prior, each round starting from the last weights;
* ``joint refit``: a mean-field posterior refitted on all data so far (the upper bound);
* ``posterior-prior (bayes-lora-fs)``: the function-space Bayesian LoRA recipe of ``compare`` (variance on
  LoRA A under a prior in the weights' own scale, B and the head point masses, log-scales with their own
  learning rate, flipout), with round k-1's posterior as round k's prior (the point masses carried as
  ``N(loc, 0.01^2)``, as ``update`` does);
* ``posterior-prior (bayes-lora-fs-mean)``: the same rounds, predicting with each round's posterior mean (the
  preset's ``predict_samples=0``; added for issue 32, where that recipe leads the default-recipe suite);
* ``update's rounds after bayes-lora-fs-mean``: round 1 that recipe, each later round the recipe
  ``update`` could fit on such a run (``rounds_recipe`` below: mean-field on every LoRA weight and the head,
  round k-1's posterior as prior, the point masses carried as ``N(loc, 0.01^2)``), predicting with samples.

After every round each method is evaluated on the test set of every round seen so far (accuracy,
NLL, ECE). Forgetting of round j after round k is ``acc_j(after j) - acc_j(after k)``; the table
reports its average over earlier rounds. Results: ``forgetting.md``, ``forgetting.json`` and
``forgetting.png`` (accuracy on round-1 data across rounds) in ``--out``. Each (method, seed) is saved
in ``--out/cells`` as it finishes, so the run resumes; ``--methods`` picks methods (the table covers the
cells there are).

    python benchmarks/forgetting.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import torch

from pyro_bhpeft import fit, load_backbone, posterior_prior, predict
from pyro_bhpeft.analysis import metrics, plots
from pyro_bhpeft.data import TaskData, load_task, make_loader, tokenize
from pyro_bhpeft.guides import Delta, LowRank, MeanField
from pyro_bhpeft.models import SequenceClassifier
from pyro_bhpeft.io import write_json, write_text
from pyro_bhpeft.priors import Normal
from pyro_bhpeft.recipe import NOT_FOR_ROUNDS, PRESETS, Recipe, built_on, train

ROUNDS = ("sentiment-movie", "sentiment-amazon", "sentiment-tweets")
@dataclass(frozen=True)
class Strategy:
    """How a method goes through the rounds: its guide, whether the previous posterior is the next prior,
    whether it warm-starts from the previous point estimate, and whether it refits on all data so far."""

    guide: Callable[[Any], Any] | None
    bayesian: bool = True  # KL weight 1 and posterior samples at prediction
    posterior_as_prior: bool = True
    warm_start: bool = False
    joint: bool = False
    recipe: str | None = None  # a recipe preset fitted through ``recipe.train`` instead of ``guide``
    update: bool = False  # rounds after the first fit ``rounds_recipe(recipe)``


METHODS = {
    "posterior-prior (mean-field)": Strategy(MeanField),
    "posterior-prior (low-rank)": Strategy(lambda model: LowRank(model, rank=8)),
    "naive sequential": Strategy(Delta, bayesian=False, posterior_as_prior=False, warm_start=True),
    "joint refit": Strategy(MeanField, posterior_as_prior=False, joint=True),
    "posterior-prior (bayes-lora-fs)": Strategy(None, recipe="bayes-lora-fs"),
    "posterior-prior (bayes-lora-fs-mean)": Strategy(None, recipe="bayes-lora-fs-mean"),
    "update's rounds after bayes-lora-fs-mean": Strategy(None, recipe="bayes-lora-fs-mean", update=True),
}


def round_data(train_size: int, test_size: int, seed: int) -> list[TaskData]:
    """Each round's training and test examples: random subsets drawn with ``seed``. (Not the first rows: the
    packaged VADER files are ordered, and the first 600 movie snippets are 97 % positive.)"""
    out = []
    for name in ROUNDS:
        task = load_task(name, seed=seed)
        parts = {split: task.splits[split].shuffle(seed=seed).select(range(min(size, len(task.splits[split]))))
                 for split, size in (("train", train_size), ("test", test_size))}
        out.append(TaskData(task.spec, datasets.DatasetDict(parts)))
    return out


def joint_data(rounds: list[TaskData]) -> TaskData:
    train = datasets.concatenate_datasets([r.splits["train"] for r in rounds]).shuffle(seed=0)
    return TaskData(rounds[0].spec, datasets.DatasetDict({"train": train, "test": rounds[0].splits["test"]}))


def rounds_recipe(recipe: Recipe) -> Recipe:
    """The recipe measured as a way for ``update`` to go on from a run of a ``NOT_FOR_ROUNDS`` preset:
    ``Recipe()``'s inference (mean-field on every LoRA weight and the head) with the run's backbone, PEFT layers
    and training settings. (It forgot more than staying on the preset, so ``update`` keeps the run's recipe.)"""
    base = Recipe()
    for name in NOT_FOR_ROUNDS:
        if built_on(recipe, name):
            return recipe.with_(**{k: getattr(base, k) for k in PRESETS[name] if k != "peft"}, predict_samples=None)
    return recipe


def round_recipe(strategy: Strategy, args, seed: int, first: bool) -> Recipe | None:
    """The recipe of a round of a method fitted through ``recipe.train`` (None: a guide fitted directly)."""
    if strategy.recipe is None:
        return None
    recipe = Recipe(backbone=args.backbone, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    max_length=args.max_length, seed=seed).with_(**PRESETS[strategy.recipe])
    return rounds_recipe(recipe) if strategy.update and not first else recipe


def train_round(strategy: Strategy, recipe: Recipe | None, data: TaskData, tokenizer, previous, args, seed: int):
    """One round of one method (``recipe``: its :func:`round_recipe`); returns the fitted posterior."""
    carried = previous is not None and strategy.posterior_as_prior
    if recipe is not None:
        return train(recipe, data, prior=posterior_prior(previous, temper=args.temper) if carried else None,
                     progress=False).posterior
    model = SequenceClassifier(load_backbone(args.backbone).model, num_labels=2,
                               prior=posterior_prior(previous, temper=args.temper) if carried else Normal(1.0))
    guide = strategy.guide(model)
    if previous is not None and strategy.warm_start:
        guide(*model.dummy_data())
        guide.load_state_dict(previous.guide.state_dict())  # start from the last point estimate
    loader = make_loader(tokenize(data, tokenizer, args.max_length)["train"], args.batch_size, shuffle=True, seed=seed)
    return fit(model, guide, loader, epochs=args.epochs, lr=args.lr, kl_weight=1.0 if strategy.bayesian else 0.0,
               seed=seed, progress=False).posterior


def evaluate(posterior, data: TaskData, tokenizer, args, samples: int) -> dict:
    loader = make_loader(tokenize(data, tokenizer, args.max_length)["test"], 64)
    pred = predict(posterior, loader, num_samples=samples)
    return metrics.classification_metrics(pred.probs.numpy(), pred.labels.numpy())


def run_cell(method: str, seed: int, args, tokenizer) -> list[list[dict]]:
    """results[k][j] = metrics on round j after round k, for one method and seed (saved, then reused)."""
    path = Path(args.out) / "cells" / f"{re.sub(r'[^a-z0-9]+', '-', method).strip('-')}-seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    rounds = round_data(args.train_size, args.test_size, seed)
    strategy = METHODS[method]
    results: list[list[dict]] = []
    previous = None
    for k in range(len(rounds)):
        data = joint_data(rounds[: k + 1]) if strategy.joint else rounds[k]
        prev = None if strategy.joint else previous
        recipe = round_recipe(strategy, args, seed, first=prev is None)
        previous = train_round(strategy, recipe, data, tokenizer, prev, args, seed)
        drawn = recipe.predict_samples if recipe is not None else None
        samples = (args.samples if drawn is None else drawn) if strategy.bayesian else 0
        results.append([evaluate(previous, rounds[j], tokenizer, args, samples) for j in range(k + 1)])
        print(f"seed {seed} {method} round {k + 1}: " + ", ".join(
            f"{ROUNDS[j]} acc {r['accuracy']:.3f}" for j, r in enumerate(results[-1])), flush=True)
    write_json(path, results)
    return results


def forgetting(per_round: list[list[dict]]) -> float:
    """Average over earlier rounds j of acc_j right after j minus acc_j after the last round."""
    last = per_round[-1]
    drops = [per_round[j][j]["accuracy"] - last[j]["accuracy"] for j in range(len(per_round) - 1)]
    return statistics.mean(drops) if drops else 0.0


def summarize(cells: dict[str, list[list[list[dict]]]], seeds: list[int], out: Path) -> None:
    """The table and figure over ``cells[method]`` (one entry per seed)."""
    lines = ["| method | seeds | avg forgetting (acc pts) | final acc, round 1 | final acc, all rounds | final NLL "
             "| final ECE % |", "|---|---|---|---|---|---|---|"]

    def ms(values):
        values = list(values)
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"

    curves, spread = {}, {}
    for method, runs in cells.items():
        lines.append(f"| {method} | {len(runs)} | {ms(100 * forgetting(r) for r in runs)} | "
                     f"{ms(100 * r[-1][0]['accuracy'] for r in runs)} | "
                     f"{ms(100 * statistics.mean(m['accuracy'] for m in r[-1]) for r in runs)} | "
                     f"{ms(statistics.mean(m['nll'] for m in r[-1]) for r in runs)} | "
                     f"{ms(statistics.mean(m['ece'] for m in r[-1]) for r in runs)} |")
        curves[method] = [statistics.mean(r[k][0]["accuracy"] for r in runs) for k in range(len(ROUNDS))]
        spread[method] = [statistics.stdev(r[k][0]["accuracy"] for r in runs) if len(runs) > 1 else 0.0
                          for k in range(len(ROUNDS))]
    table = "\n".join(lines)
    write_text(out / "forgetting.md", f"Rounds: {' -> '.join(ROUNDS)}; mean ± sd over seeds "
               f"{', '.join(map(str, seeds))}.\n\n{table}\n")
    plots.accuracy_over_rounds(curves, out / "forgetting.png", xlabel="round (1 = movie, 2 = amazon, 3 = tweets)",
                              ylabel="accuracy on round-1 (movie) test", errors=spread,
                              title="Forgetting of the first domain (mean ± sd over seeds)")
    print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of: " + ", ".join(METHODS))
    p.add_argument("--train-size", type=int, default=800, help="training examples per round")
    p.add_argument("--test-size", type=int, default=400)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--temper", type=float, default=1.0)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/forgetting")
    args = p.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"forgetting: unknown methods {unknown}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    protocol = {k: v for k, v in vars(args).items() if k not in ("seeds", "methods", "threads", "out")}
    protocol["subsets"] = "seeded random"  # cells of the first-rows protocol (before this field) are refused
    saved = out / "protocol.json"
    if saved.exists() and json.loads(saved.read_text()) != protocol:
        raise SystemExit(f"forgetting: {out} holds cells of another protocol ({saved}); use another --out")
    write_json(saved, protocol)
    tokenizer = load_backbone(args.backbone).tokenizer
    cells = {m: [run_cell(m, s, args, tokenizer) for s in args.seeds] for m in methods}
    write_json(out / "forgetting.json", {"protocol": protocol, "seeds": args.seeds, "results": cells})
    summarize(cells, args.seeds, out)


if __name__ == "__main__":
    main()
