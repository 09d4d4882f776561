"""ABMLL against its baselines on unseen multiple-choice tasks (MiniLM), resumable cell by cell.

The protocol, fixed before any result was seen:

* Backbone: the packaged MiniLM, multiple choice by a linear scorer of each (question, choice) pair, 64 tokens.
* Tasks: meta-train on ARC-Easy, OpenBookQA, PIQA, CommonsenseQA, HellaSwag (a random 1,000 training questions
  of each, seeded); meta-test on the held-out ARC-Challenge, WinoGrande and SocialIQA. BoolQ, the ninth
  packaged task, is left out: at 64 tokens its question, which follows the passage, is truncated away.
* Every method sees the same 1,920 meta-training questions (ABMLL: 120 outer steps x 2 tasks x (4 support +
  4 query); the union baselines: 120 steps of 16, one task per batch, round robin) and, on an unseen task,
  the same 32 support questions (drawn from its training split with the seed) for 10 steps (the paper's
  number of adaptation steps), then predict its first 200 test questions (K = 4 posterior samples where the
  method has a posterior). Seeds 0-2 (subsets, support sets, initialisations).
* Methods: ``abmll`` (full-matrix deltas on query/value, hierarchical prior of rank 8 with c = 0.05 std(W0),
  beta 1, gamma 1e-3, Adam 1e-3 on theta, inner Adam 0.1 for 3 steps in meta-training and 10 at test);
  ``abmll-prior`` (the same theta, no adaptation: the prior predictive); ``multitask-lora-ft`` (LoRA r=8 by
  maximum likelihood on the union, then fine-tuned on the support set; deterministic); ``support-lora``
  (LoRA r=8 on the support set alone); ``posterior-prior`` (the function-space Bayesian LoRA,
  ``bayes-lora-fs``, on the union, its posterior the prior of a round on the support set). LoRA learning
  rate 2e-3, as every comparison here. No hyperparameter was tuned (no validation run was affordable): each
  is the library's default or the paper's.

    python benchmarks/abmll.py --out docs/abmll --seeds 0 1 2     # ~30 min per seed on one core
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_bhpeft import LoraConfig, PeftConfig, fit, load_backbone, posterior_prior, predict
from pyro_bhpeft.analysis import metrics, plots
from pyro_bhpeft.analysis.tables import markdown_table
from pyro_bhpeft.guides import Delta
from pyro_bhpeft.io import write_json, write_text
from pyro_bhpeft.meta import MetaConfig, adapt, meta_fit, support_and_query, task_batches, to_posterior
from pyro_bhpeft.models import MultipleChoice
from pyro_bhpeft.layers.delta import DeltaConfig
from pyro_bhpeft.posterior import Posterior
from pyro_bhpeft.priors import Normal
from pyro_bhpeft.recipe import PRESETS, Recipe, build_guide, fit_options

TRAIN_TASKS = ("arc-easy", "openbookqa", "piqa", "commonsenseqa", "hellaswag")
TEST_TASKS = ("arc-challenge", "winogrande", "socialiqa")
PER_TASK, SUPPORT, QUERY, ADAPT_STEPS, SAMPLES, MAX_LENGTH = 1000, 32, 200, 10, 4, 64
META = MetaConfig(steps=120, tasks_per_step=2, support=4, query=4, inner_steps=3, inner_lr=0.1, beta=1.0,
                  gamma=1e-3, lr=1e-3, rank=8, c_ratio=0.05)
UNION_STEPS, BATCH, LR = 120, 16, 2e-3
METHODS = ("abmll", "abmll-prior", "multitask-lora-ft", "support-lora", "posterior-prior")
COLUMNS = (("accuracy %", "accuracy", 100), ("ECE %", "ece", 1), ("NLL", "nll", 1))  # ece is in % already


def _train_batches(tokenizer, seed: int, size: int) -> dict[str, list]:
    return task_batches(TRAIN_TASKS, tokenizer, per_task=PER_TASK, batch_size=size, max_length=MAX_LENGTH, seed=seed)


def _round_robin(per_task: dict[str, list], steps: int) -> list:
    streams = {t: iter(b * (steps // len(b) + 1)) for t, b in per_task.items()}
    names = list(per_task)
    return [next(streams[names[s % len(names)]]) for s in range(steps)]


def _unseen(task: str, tokenizer, seed: int):
    return support_and_query(task, tokenizer, support=SUPPORT, query=QUERY, max_length=MAX_LENGTH, seed=seed)


def _lora_model(backbone, prior=None):
    return MultipleChoice(backbone, PeftConfig(LoraConfig(r=8)), prior if prior is not None else Normal(1.0))


class Fits:
    """The seed's meta-training fits, each made once and kept under ``out/fits`` (git-ignored)."""

    def __init__(self, out: Path, seed: int, tokenizer) -> None:
        self.dir, self.seed, self.tokenizer = out / "fits", seed, tokenizer
        self.seconds: dict[str, float] = {}

    def _cached(self, name: str, make):
        path = self.dir / f"{name}-seed{self.seed}"
        if (path / "config.json").exists():
            facts = json.loads((path / "facts.json").read_text())
            self.seconds[name] = facts["seconds"]
            return Posterior.load(path, backbone=load_backbone("minilm").model)
        tick = time.perf_counter()
        posterior = make()
        self.seconds[name] = time.perf_counter() - tick
        posterior.save(path)
        write_json(path / "facts.json", {"seconds": self.seconds[name]})
        return posterior

    def abmll(self) -> Posterior:
        def make():
            model = MultipleChoice(load_backbone("minilm").model, PeftConfig(lora=None, delta=DeltaConfig()))
            tasks = _train_batches(self.tokenizer, self.seed, META.support + META.query)
            result = meta_fit(model, tasks, MetaConfig(**{**META.__dict__, "seed": self.seed}),
                              num_data={t: PER_TASK for t in tasks})
            return to_posterior(adapt(model, result.prior, [], steps=0), history=result.history,
                                kl_history=result.kl_history)
        return self._cached("abmll", make)

    def union(self, name: str, recipe: Recipe) -> Posterior:
        def make():
            model = _lora_model(load_backbone("minilm").model, recipe.make_prior())
            guide = build_guide(recipe, model)
            batches = _round_robin(_train_batches(self.tokenizer, self.seed, BATCH), UNION_STEPS)
            options = {**fit_options(recipe), "epochs": 1, "max_steps": None}
            return fit(model, guide, batches, num_data=PER_TASK * len(TRAIN_TASKS), **options).posterior
        return self._cached(name, make)


def run_cell(method: str, task: str, seed: int, fits: Fits, tokenizer) -> dict:
    support, query = _unseen(task, tokenizer, seed)
    mle = Recipe(guide="mle", lr=LR, seed=seed)
    if method in ("abmll", "abmll-prior"):
        base = fits.abmll()
        steps = ADAPT_STEPS if method == "abmll" else 0
        posterior = to_posterior(adapt(base.model, base.model.prior, support, steps=steps, lr=META.inner_lr,
                                       num_data=SUPPORT))
        samples = SAMPLES
    elif method == "multitask-lora-ft":
        union = fits.union("multitask-lora", mle)
        model = _lora_model(load_backbone("minilm").model)
        guide = Delta(model)
        guide(*model.dummy_data())
        guide.load_state_dict(union.guide.state_dict())  # start from the union's LoRA and head
        posterior = fit(model, guide, support, num_data=SUPPORT, epochs=ADAPT_STEPS, lr=LR, kl_weight=0.0, seed=seed,
                        progress=False).posterior
        samples = 0
    elif method == "support-lora":
        model = _lora_model(load_backbone("minilm").model)
        posterior = fit(model, Delta(model), support, num_data=SUPPORT, epochs=ADAPT_STEPS, lr=LR, kl_weight=0.0,
                        seed=seed, progress=False).posterior
        samples = 0
    else:  # posterior-prior
        recipe = Recipe(lr=LR, seed=seed).with_(**PRESETS["bayes-lora-fs"])
        union = fits.union("bayes-lora-fs", recipe)
        model = _lora_model(load_backbone("minilm").model, posterior_prior(union))
        options = {**fit_options(recipe), "epochs": ADAPT_STEPS, "max_steps": None}
        posterior = fit(model, build_guide(recipe, model), support, num_data=SUPPORT, progress=False,
                        **options).posterior
        samples = SAMPLES
    pred = predict(posterior, query, num_samples=samples, seed=seed)
    return metrics.classification_metrics(pred.probs.numpy(), pred.labels.numpy())


def summarize(out: Path, cells: dict, seeds: list[int]) -> None:
    rows, per_task = [], {}
    for task in TEST_TASKS:
        for method in METHODS:
            found = [cells[(method, task, s)] for s in seeds if (method, task, s) in cells]
            if not found:
                continue
            row = [task, method, str(len(found))]
            for _, key, mult in COLUMNS:
                values = [c[key] * mult for c in found]
                row.append(f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}")
                per_task[(task, method, key)] = (statistics.fmean(values),
                                                 statistics.stdev(values) if len(values) > 1 else 0.0)
            rows.append(row)
    table = markdown_table(["unseen task", "method", "seeds", *(c for c, _, _ in COLUMNS)], rows)
    fig = Figure(figsize=(12, 3.6))
    for ax, (title, key, _) in zip(fig.subplots(1, 3), COLUMNS):
        x = np.arange(len(TEST_TASKS))
        width = 0.8 / len(METHODS)
        for j, method in enumerate(METHODS):
            got = [per_task.get((t, method, key), (np.nan, 0.0)) for t in TEST_TASKS]
            ax.bar(x + (j - len(METHODS) / 2 + 0.5) * width, [g[0] for g in got], width, yerr=[g[1] for g in got],
                   label=method)
        ax.set_xticks(x, TEST_TASKS, fontsize=8)
        ax.set_title(title)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, out / "abmll.png")
    doc = __doc__.split("\n\n")
    write_text(out / "abmll.md", f"# {doc[0]}\n\n{chr(10).join(doc[1:-1])}\n\nSeeds run: {', '.join(map(str, seeds))}.\n\n"
               f"{table}\n\n![ABMLL](abmll.png)\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/abmll"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"abmll: unknown methods {unknown}; choose from {', '.join(METHODS)}")
    tokenizer = load_backbone("minilm").tokenizer
    cells = {}
    for path in (args.out / "cells").glob("*.json"):
        c = json.loads(path.read_text())
        cells[(c["method"], c["task"], c["seed"])] = c
    for seed in args.seeds:
        fits = Fits(args.out, seed, tokenizer)
        for method in methods:
            for task in TEST_TASKS:
                if (method, task, seed) in cells:
                    continue
                print(f"== {method} on {task}, seed {seed}", flush=True)
                cell = {"method": method, "task": task, "seed": seed, **run_cell(method, task, seed, fits, tokenizer)}
                write_json(args.out / "cells" / f"{method}-{task}-seed{seed}.json", cell)
                cells[(method, task, seed)] = cell
    summarize(args.out, cells, sorted({s for _, _, s in cells}))


if __name__ == "__main__":
    main()
