"""The main job: deterministic LoRA against the recipe ``fit`` takes by default, on real sentiment data, with a report.

Protocol, fixed before any result was seen: the packaged MiniLM; the ``sentiment`` task (Rotten
Tomatoes snippets, SST-2 sentences removed from training); 4,000 training examples drawn at random
(seed 0) from the seeded split; one epoch, batch 16, 64 tokens, Adam lr 2e-3, seed 0 for both methods, the same mean
pooling and linear head. Deterministic LoRA is our point-mass guide with no prior (maximum
likelihood, i.e. plain LoRA training); the other method is the recipe ``fit`` takes on a classification when none
is named (``recipe.kind_recipe``; the default-recipe suite chooses it). Until 2026-12 it was the LoRA + Adapter +
prefix hybrid with a mean-field posterior, whose report docs/results/demo.md keeps. Both are evaluated on the
held-out test split and on SST-2 validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .predict import DEFAULT_SAMPLES
from .guides import GUIDES
from .recipe import EVAL_BATCH_SIZE, PRESETS, Recipe, kind_default

__all__ = ["run_demo", "DEMO_METHODS", "DEMO_TRAIN_SIZE"]

DEMO_TRAIN_SIZE = 4000
DEMO_SAMPLES = DEFAULT_SAMPLES
_BASE = Recipe(backbone="minilm", epochs=1, batch_size=16, lr=2e-3, max_length=64, seed=0)
DEMO_METHODS: dict[str, Recipe] = {
    "deterministic LoRA": _BASE.with_(guide="mle"),
}
DEFAULT_NAME = kind_default("classification") or "mean-field-lora"  # the preset fit takes here (Recipe()'s own)
DEFAULT_LABEL = f"fit's default ({DEFAULT_NAME})"
DEMO_METHODS[DEFAULT_LABEL] = _BASE.with_(**PRESETS[DEFAULT_NAME])
METRIC_COLUMNS = (("accuracy %", "accuracy", 100.0, 2), ("NLL", "nll", 1.0, 3), ("Brier", "brier", 1.0, 3),
                  ("ECE %", "ece", 1.0, 2), ("ECE floor %", "ece_floor", 1.0, 2), ("MCE %", "mce", 1.0, 2))


def _draws(recipe: Recipe) -> int:
    """The posterior draws the demo predicts ``recipe`` with: none for a point mass, else the recipe's own."""
    return 0 if GUIDES[recipe.guide].point_mass else recipe.samples


@dataclass
class _MethodResult:
    metrics: dict[str, dict[str, Any]]
    probs: dict[str, tuple[Any, Any]]
    history: list[float]
    seconds: float


def _run_method(name: str, recipe: Recipe, data, source, eval_splits, out: Path) -> _MethodResult:
    from .backbone import load_backbone
    from .data import make_loader, tokenize
    from .predict import predict
    from .runs import fit_run
    from pyro_bhpeft.analysis import metrics

    print(f"\n== {name} ==", flush=True)
    backbone = load_backbone(recipe.backbone)
    result = fit_run(recipe, data, out / "runs" / _slug(name), source=source, backbone=backbone, overwrite=True)
    tokenized = tokenize(data, backbone.tokenizer, recipe.max_length)
    samples = _draws(recipe)
    found, probs = {}, {}
    for split in eval_splits:
        pred = predict(result.posterior, make_loader(tokenized[split], EVAL_BATCH_SIZE), num_samples=samples,
                       progress=True)
        p, y = pred.probs.numpy(), pred.labels.numpy()
        found[split] = metrics.classification_metrics(p, y)
        found[split]["ece_floor"] = metrics.ece_floor(p).mean
        found[split]["mutual_information"] = float(pred.mutual_information.mean())
        probs[split] = (p, y)
    return _MethodResult(found, probs, result.history, result.seconds)


def _slug(name: str) -> str:
    """A folder name: ``"fit's default (mean-field-lora)"`` -> ``"fits-default-mean-field-lora"``."""
    kept = "".join(c if c.isalnum() else "-" for c in name.lower().replace("'", ""))
    return "-".join(part for part in kept.split("-") if part)


def _table(results: dict[str, _MethodResult], split: str) -> str:
    head = "| method | " + " | ".join(c for c, _, _, _ in METRIC_COLUMNS) + " | train time (s) |"
    rows = [head, "|" + "---|" * (len(METRIC_COLUMNS) + 2)]
    for name, r in results.items():
        cells = [f"{r.metrics[split][key] * mult:.{digits}f}" for _, key, mult, digits in METRIC_COLUMNS]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {r.seconds:.0f} |")
    return "\n".join(rows)


def _report(results: dict[str, _MethodResult], splits: dict[str, str], figures: list[str], n_train: int,
            quick: bool) -> str:
    draws = _draws(DEMO_METHODS[DEFAULT_LABEL])
    lines = [f"# pyro-bhpeft demo: deterministic LoRA vs fit's default recipe ({DEFAULT_NAME}) on sentiment", "",
             f"Backbone: packaged all-MiniLM-L6-v2. Training: {n_train} Rotten Tomatoes snippets drawn at random "
             "(seed 0) from the training split, one epoch, batch 16, 64 tokens, Adam lr 2e-3, seed 0 (same for both "
             "methods). " + (f"`{DEFAULT_NAME}` predicts with {draws} posterior draws." if draws else
                             f"`{DEFAULT_NAME}` predicts with its posterior mean (one forward pass, as LoRA).")
             + (" QUICK MODE: tiny slices, numbers are meaningless." if quick else ""), ""]
    for split, title in splits.items():
        lines += [f"## {title}", "", _table(results, split), ""]
    lines += ["ECE and MCE use 15 equal-width confidence bins, in percent. Lower NLL, Brier and ECE are better. "
              "ECE floor: the ECE a perfectly calibrated model with the same confidences would show on this many "
              "examples (labels drawn from its own probabilities, 200 draws); an ECE near its floor cannot be "
              "lowered by better calibration.", ""]
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def run_demo(out: Path, *, quick: bool = False) -> Path:
    """Fit both methods, evaluate, and write ``report.md`` and PNG figures into ``out``."""
    from .io import write_text
    from .runs import DataSource
    from pyro_bhpeft.analysis import plots

    source = DataSource(task="sentiment", max_examples=200 if quick else None, seed=0,
                        train_size=64 if quick else DEMO_TRAIN_SIZE, subset_seed=0)
    data = source.load()
    n_train = len(data.splits["train"])
    splits = {"test": "Held-out Rotten Tomatoes test split", "sst2": "SST-2 validation (out of domain)"}
    results = {name: _run_method(name, recipe.with_(max_steps=4) if quick else recipe, data, source, splits, out)
               for name, recipe in DEMO_METHODS.items()}
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for split in splits:
        by_method = {name: r.probs[split] for name, r in results.items()}
        for kind, fn in (("reliability", plots.reliability_diagram), ("confidence", plots.confidence_histogram),
                         ("coverage", plots.accuracy_coverage)):
            path = fn(by_method, out / f"{kind}-{split}.png")
            figures.append(Path(path).name)
    figures.append(Path(plots.elbo_trace({n: r.history for n, r in results.items()}, out / "training-loss.png")).name)
    from .io import write_json

    write_json(out / "metrics.json", {n: r.metrics for n, r in results.items()})
    return write_text(out / "report.md", _report(results, splits, figures, n_train, quick))

