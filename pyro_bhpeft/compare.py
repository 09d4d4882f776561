"""Side-by-side comparison of inference schemes: same data, head, steps and seeds for every method.

``pyro-bhpeft compare --task sentiment --seeds 3`` fits every method on the same training subset with
the same budget, scores it on the same test (and out-of-distribution) examples, and writes a table
(mean and standard deviation over seeds), a paired significance test against deterministic LoRA, and
figures. Every (method, seed) cell is saved as soon as it is done, and fits shared between methods
(the deterministic LoRA behind temperature scaling, Laplace and the ensemble) are saved once, so an
interrupted comparison resumes where it stopped.

Methods (LoRA r=8 on query/value, mean pooling and a linear head throughout; K posterior samples):

=================  ===================================================================================
``lora``           deterministic LoRA: a point estimate without prior (maximum likelihood), our ``fit``
``map``            the same point estimate with the N(0, 1) prior (MAP)
``peft-lora``      the same LoRA and head trained through the ``peft`` library (plain cross-entropy)
``mc-dropout``     LoRA trained and predicted with the backbone's dropout on, K passes
``ensemble``       ``ensemble_size`` deterministic LoRAs (seeds s, s+1000, ...), probabilities averaged
``laplace``        post-hoc diagonal-GGN Laplace around ``lora``, prior precision by evidence; the
                   predictive averages K weight samples (sampled, not linearised, predictive)
``laplace-glm``    the same Laplace posterior with the linearised (GLM) predictive of Immer et al. 2021
``temperature``    ``lora`` with a temperature fitted on the validation examples
``mean-field``     BH-PEFT: LoRA + adapter + prefix, mean-field posterior, K samples
``low-rank``       BH-PEFT hybrid with a rank-8 low-rank posterior
``mean-field-lora``  LoRA-only mean-field (what the hybrid adds over Bayesian LoRA)
=================  ===================================================================================

The protocol (:class:`Protocol`) is fixed before anything is fitted and saved with the results; a
comparison directory refuses to resume under a different protocol.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .config import ConfigError, PeftConfig
from .io import atomic_dir, write_json, write_text
from .recipe import Recipe

__all__ = ["Protocol", "METHODS", "DEFAULT_METHODS", "OOD_DEFAULTS", "run_compare", "summarize"]

OOD_DEFAULTS = {"sentiment": "r8", "r8": "sentiment", "r52": "sentiment", "20ng": "sentiment", "piqa": "winogrande",
                "winogrande": "piqa", "arc-easy": "openbookqa", "arc-challenge": "openbookqa",
                "openbookqa": "arc-easy", "commonsenseqa": "openbookqa"}
METRICS = (("accuracy %", "accuracy", 100.0, 2), ("NLL", "nll", 1.0, 3), ("Brier", "brier", 1.0, 3),
           ("ECE %", "ece", 1.0, 2), ("ECE floor %", "ece_floor", 1.0, 2), ("sel. AUC", "selective_auc", 1.0, 3), ("OOD AUROC", "ood_auroc", 1.0, 3),
           ("train s", "train_seconds", 1.0, 0), ("predict s", "predict_seconds", 1.0, 1),
           ("peak MB", "peak_mb", 1.0, 0), ("params", "trainable", 1.0, 0))


@dataclass(frozen=True)
class Protocol:
    """Everything every method shares. ``train_size``/``eval_size``: rows drawn at random (``subset_seed``)
    from the task's train split / from its test and validation splits and the OOD task's test split.
    ``max_steps`` caps steps (quick runs)."""

    task: str = "sentiment"
    backbone: str = "minilm"
    train_size: int = 1000
    eval_size: int = 500
    epochs: int = 2
    batch_size: int = 16
    lr: float = 2e-3
    max_length: int = 64
    samples: int = 8
    ensemble_size: int = 3
    laplace_examples: int = 256
    ood_task: str | None = None
    max_steps: int | None = None
    subset_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_size", "eval_size", "epochs", "batch_size", "samples", "ensemble_size", "laplace_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ConfigError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        if self.ood_task is None and self.task in OOD_DEFAULTS:
            object.__setattr__(self, "ood_task", OOD_DEFAULTS[self.task])

    def recipe(self, seed: int, **changes: Any) -> Recipe:
        """Deterministic LoRA under this protocol; methods change only what makes them different."""
        base = Recipe(backbone=self.backbone, guide="mle", epochs=self.epochs, max_steps=self.max_steps,
                      batch_size=self.batch_size, lr=self.lr, max_length=self.max_length, seed=seed)
        return base.with_(**changes)


# ---- the data every method sees ------------------------------------------------------------------
class Bench:
    """The protocol's data, tokenised once, and the fits made so far (saved under ``out/fits``)."""

    def __init__(self, protocol: Protocol, out: Path, data: Any, ood: Any | None, progress: bool) -> None:
        from .backbone import load_backbone
        from .data import make_loader, tokenize

        self.protocol, self.out, self.progress = protocol, out, progress
        self.data = _subset(data, {"train": protocol.train_size}, protocol.eval_size, protocol.subset_seed)
        self.spec = data.spec
        tokenizer = load_backbone(protocol.backbone).tokenizer
        tokenized = tokenize(self.data, tokenizer, protocol.max_length)
        self.tokenized = tokenized
        self.eval_loaders = {s: make_loader(tokenized[s], 64) for s in ("validation", "test") if s in tokenized}
        if ood is not None:
            ood = _subset(ood, {}, protocol.eval_size, protocol.subset_seed, splits=("test",))
            if ood.spec.kind != data.spec.kind:
                raise ConfigError(f"the OOD task is {ood.spec.kind} but {protocol.task} is {data.spec.kind}; "
                                  "pick an OOD task of the same kind (--ood)")
            self.eval_loaders["ood"] = make_loader(tokenize(ood, tokenizer, protocol.max_length)["test"], 64)
        self.num_train = len(self.data.splits["train"])
        self.predict_seconds = 0.0  # prediction time of the current cell

    def train_loader(self, seed: int):
        from .data import make_loader

        return make_loader(self.tokenized["train"], self.protocol.batch_size, shuffle=True, seed=seed)

    def backbone(self):
        from .backbone import load_backbone

        return load_backbone(self.protocol.backbone).model  # fresh: PEFT injection changes it

    def fitted(self, recipe: Recipe) -> tuple[Any, dict[str, Any]]:
        """The posterior of ``recipe`` on the training subset (fitted once, then loaded) and its facts."""
        from .backbone import load_backbone
        from .posterior import Posterior
        from .data import TASKS
        from .recipe import train
        from .runs import DataSource, run_meta, save_run

        key = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        path = self.out / "fits" / f"{recipe.guide}-seed{recipe.seed}-{key}"
        if (path / "fit.json").exists():
            return Posterior.load(path, backbone=self.backbone()), json.loads((path / "fit.json").read_text())
        with PeakMemory() as peak:
            result = train(recipe, self.data, progress=self.progress, backbone=load_backbone(recipe.backbone))
        if self.protocol.task in TASKS:  # a registered task: diagnose and evaluate can reload the data
            source = DataSource(task=self.protocol.task, seed=0, train_size=self.protocol.train_size,
                                subset_seed=self.protocol.subset_seed)
            result.posterior.meta.update(run_meta(recipe, source, self.data))
        facts = {"seconds": result.seconds, "steps": result.steps, "peak_mb": peak.mb,
                 "trainable": sum(p.numel() for p in result.posterior.guide.parameters() if p.requires_grad)}
        save_run(path, result, overwrite=True, extra={"fit.json": facts})
        return result.posterior, facts


def _subset(data: Any, sizes: dict[str, int], eval_size: int, seed: int, splits: Sequence[str] | None = None):
    """Random rows of each split (``sizes`` per split name, ``eval_size`` for the others)."""
    import datasets

    from .runs import random_rows

    keep = {}
    for name, split in data.splits.items():
        if splits is not None and name not in splits:
            continue
        keep[name] = random_rows(split, sizes.get(name, eval_size), seed)
    return type(data)(data.spec, datasets.DatasetDict(keep))


class PeakMemory:
    """Peak resident memory (MB) of this process inside the block. Linux resets the high-water mark
    through ``/proc/self/clear_refs``; elsewhere the process-wide peak so far is reported."""

    def __enter__(self) -> "PeakMemory":
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.mb = float("nan")
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.mb = int(line.split()[1]) / 1024
        except OSError:
            import resource

            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the methods ----------------------------------------------------------------------------------
@dataclass
class Scored:
    """What one method produced for one seed: predictions per split and its costs."""

    predictions: dict[str, Any]
    train_seconds: float
    peak_mb: float
    trainable: int
    notes: dict[str, Any] = field(default_factory=dict)


def _predict_all(bench: Bench, fn: Callable[[Any], Any], splits: Sequence[str] = ("test", "ood")) -> dict[str, Any]:
    """``fn(loader)`` on the test and OOD examples, its time added to the cell's prediction time."""
    tick = time.perf_counter()
    preds = {s: fn(bench.eval_loaders[s]) for s in splits if s in bench.eval_loaders}
    bench.predict_seconds += time.perf_counter() - tick
    return preds


def _sampled(recipe_changes: dict[str, Any]) -> Callable[[Bench, int], Scored]:
    def method(bench: Bench, seed: int) -> Scored:
        from .predict import predict

        posterior, facts = bench.fitted(bench.protocol.recipe(seed, **recipe_changes))
        k = bench.protocol.samples if recipe_changes.get("guide", "mle") not in ("mle", "map") else 0
        preds = _predict_all(bench, lambda loader: predict(posterior, loader, num_samples=k, seed=seed))
        return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])

    return method


def _mc_dropout(bench: Bench, seed: int) -> Scored:
    from .baselines import mc_dropout_predict

    posterior, facts = bench.fitted(bench.protocol.recipe(seed, dropout=True))
    preds = _predict_all(bench, lambda loader: mc_dropout_predict(posterior, loader, num_samples=bench.protocol.samples,
                                                                   seed=seed))
    return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])


def _ensemble(bench: Bench, seed: int) -> Scored:
    from .baselines import ensemble_predict

    members = [bench.fitted(bench.protocol.recipe(seed + 1000 * m)) for m in range(bench.protocol.ensemble_size)]
    preds = _predict_all(bench, lambda loader: ensemble_predict([p for p, _ in members], loader))
    return Scored(preds, sum(f["seconds"] for _, f in members), max(f["peak_mb"] for _, f in members),
                  sum(f["trainable"] for _, f in members))


def _laplace_fit(bench: Bench, seed: int) -> tuple[Any, float, float, int, dict[str, Any]]:
    """The Laplace posterior around seed ``seed``'s LoRA (computed once, saved under ``fits/``), with
    its train seconds (LoRA fit + GGN), peak MB, trainable count and notes."""
    from .baselines import laplace_posterior
    from .posterior import Posterior

    point, facts = bench.fitted(bench.protocol.recipe(seed))
    path = bench.out / "fits" / f"laplace-seed{seed}"
    if (path / "laplace.json").exists():
        saved = json.loads((path / "laplace.json").read_text())
        posterior = Posterior.load(path, backbone=bench.backbone())
    else:
        with PeakMemory() as peak:
            fit = laplace_posterior(point, bench.train_loader(seed), num_data=bench.num_train,
                                    max_examples=bench.protocol.laplace_examples, progress=bench.progress)
        saved = {"seconds": fit.seconds, "peak_mb": peak.mb, "prior_precision": fit.prior_precision,
                 "ggn_examples": fit.examples}
        with atomic_dir(path, overwrite=True) as stage:
            fit.posterior.write_to(stage)
            write_json(stage / "laplace.json", saved)
        posterior = fit.posterior
    notes = {"prior_precision": saved["prior_precision"], "ggn_examples": saved["ggn_examples"]}
    return (posterior, facts["seconds"] + saved["seconds"], max(facts["peak_mb"], saved["peak_mb"]),
            facts["trainable"], notes)


def _laplace(bench: Bench, seed: int) -> Scored:
    from .predict import predict

    posterior, seconds, peak_mb, trainable, notes = _laplace_fit(bench, seed)
    preds = _predict_all(bench, lambda loader: predict(posterior, loader, num_samples=bench.protocol.samples,
                                                       seed=seed))
    return Scored(preds, seconds, peak_mb, trainable, notes)


def _laplace_glm(bench: Bench, seed: int) -> Scored:
    from .baselines import linearised_predict

    posterior, seconds, peak_mb, trainable, notes = _laplace_fit(bench, seed)
    preds = _predict_all(bench, lambda loader: linearised_predict(posterior, loader, num_samples=bench.protocol.samples,
                                                                  seed=seed))
    return Scored(preds, seconds, peak_mb, trainable, notes)


def _temperature(bench: Bench, seed: int) -> Scored:
    from .baselines import fit_temperature, tempered
    from .predict import predict

    if "validation" not in bench.eval_loaders:
        raise ConfigError(f"temperature scaling needs a validation split; {bench.spec.name} has none")
    point, facts = bench.fitted(bench.protocol.recipe(seed))
    tick = time.perf_counter()
    val = predict(point, bench.eval_loaders["validation"], num_samples=0)
    temperature = fit_temperature(val.probs, val.labels)
    seconds = time.perf_counter() - tick
    preds = _predict_all(bench, lambda loader: tempered(predict(point, loader, num_samples=0), temperature))
    return Scored(preds, facts["seconds"] + seconds, facts["peak_mb"], facts["trainable"] + 1,
                  {"temperature": temperature})


def _peft_lora(bench: Bench, seed: int) -> Scored:
    from .baselines import PeftLoraModel, peft_predict, train_peft_lora
    from .models.base import default_pooling

    recipe = bench.protocol.recipe(seed)
    backbone = bench.backbone()
    num_labels = None if bench.spec.kind == "multiple_choice" else len(bench.spec.label_names)
    torch.manual_seed(seed)  # LoRA and head initialisation
    with PeakMemory() as peak:
        model = PeftLoraModel(backbone, recipe.peft.lora, num_labels, default_pooling(backbone))
        fit = train_peft_lora(model, bench.train_loader(seed), epochs=recipe.epochs, lr=recipe.lr,
                              max_steps=recipe.max_steps, progress=bench.progress)
    preds = _predict_all(bench, lambda loader: peft_predict(model, loader))
    return Scored(preds, fit.seconds, peak.mb, sum(p.numel() for p in model.trainable()))


@dataclass(frozen=True)
class Method:
    description: str
    run: Callable[[Bench, int], Scored]


METHODS: dict[str, Method] = {
    "lora": Method("deterministic LoRA (maximum likelihood, our fit)", _sampled({})),
    "map": Method("LoRA, MAP with the N(0,1) prior", _sampled({"guide": "map"})),
    "peft-lora": Method("LoRA trained through the peft library", _peft_lora),
    "mc-dropout": Method("MC dropout on LoRA (backbone dropout in training and K test passes)", _mc_dropout),
    "ensemble": Method("deep ensemble of deterministic LoRAs", _ensemble),
    "laplace": Method("post-hoc diagonal-GGN Laplace around the LoRA fit, sampled predictive", _laplace),
    "laplace-glm": Method("the same Laplace posterior, linearised (GLM) predictive", _laplace_glm),
    "temperature": Method("deterministic LoRA + temperature scaling on validation", _temperature),
    "mean-field": Method("BH-PEFT hybrid (LoRA+adapter+prefix), mean-field",
                         _sampled({"guide": "mean-field", "peft": PeftConfig.hybrid()})),
    "low-rank": Method("BH-PEFT hybrid, low-rank (rank 8)", _sampled({"guide": "low-rank", "peft": PeftConfig.hybrid()})),
    "mean-field-lora": Method("Bayesian LoRA only, mean-field", _sampled({"guide": "mean-field"})),
}
DEFAULT_METHODS = tuple(METHODS)


# ---- cells, resumable -------------------------------------------------------------------------------
def _cell_metrics(scored: Scored, predict_seconds: float) -> dict[str, Any]:
    from pyro_bhpeft.analysis import metrics

    out: dict[str, Any] = {"train_seconds": scored.train_seconds, "predict_seconds": predict_seconds,
                           "peak_mb": scored.peak_mb, "trainable": scored.trainable, **scored.notes}
    test = scored.predictions["test"]
    probs, labels = test.probs.numpy(), test.labels.numpy()
    out.update(metrics.classification_metrics(probs, labels))
    out["selective_auc"] = metrics.selective_auc(probs, labels, test.predictive_entropy.numpy())
    out["mutual_information"] = float(test.mutual_information.mean())
    if "ood" in scored.predictions:
        out["ood_auroc"] = metrics.ood_auroc(test.predictive_entropy.numpy(),
                                             scored.predictions["ood"].predictive_entropy.numpy())
    return out


def _arrays(scored: Scored) -> dict[str, np.ndarray]:
    arrays = {}
    for split, pred in scored.predictions.items():
        arrays[f"{split}_probs"] = pred.probs.numpy()
        arrays[f"{split}_entropy"] = pred.predictive_entropy.numpy()
        arrays[f"{split}_mi"] = pred.mutual_information.numpy()
        if pred.labels is not None and split != "ood":
            arrays[f"{split}_labels"] = pred.labels.numpy()
    return arrays


def _cell_dir(out: Path, method: str, seed: int) -> Path:
    return out / "cells" / f"{method}-seed{seed}"


def _run_cell(bench: Bench, method: str, seed: int) -> dict[str, Any]:
    path = _cell_dir(bench.out, method, seed)
    if (path / "metrics.json").exists():
        return json.loads((path / "metrics.json").read_text())
    print(f"\n== {method}, seed {seed}: {METHODS[method].description} ==", flush=True)
    torch.manual_seed(seed)
    bench.predict_seconds = 0.0
    scored = METHODS[method].run(bench, seed)
    result = _cell_metrics(scored, predict_seconds=bench.predict_seconds)
    scales = _scale_rows(bench.out, method, seed)
    with atomic_dir(path, overwrite=True) as stage:
        np.savez_compressed(stage / "predictions.npz", **_arrays(scored))
        write_json(stage / "metrics.json", result)
        if scales:  # kept with the cell, so the scale figure outlives the (uncommitted) fit
            write_json(stage / "scales.json", scales)
    print(f"   accuracy {100 * result['accuracy']:.2f}%  NLL {result['nll']:.3f}  ECE {result['ece']:.2f}%", flush=True)
    return result


def _check_protocol(out: Path, protocol: Protocol, overwrite: bool) -> None:
    saved = out / "protocol.json"
    if saved.exists():
        if json.loads(saved.read_text()) != asdict(protocol):
            if not overwrite:
                raise FileExistsError(f"{out} holds a comparison with a different protocol; choose another --out "
                                      "or pass --overwrite to discard it")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        write_json(saved, asdict(protocol))


def run_compare(protocol: Protocol, out: str | Path, *, methods: Sequence[str] = DEFAULT_METHODS,
                seeds: Sequence[int] = (0, 1, 2), data: Any = None, ood: Any = None, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Fit and score every (method, seed) cell not already in ``out``, then write the summary.

    ``data``/``ood`` default to the protocol's registered tasks; pass :class:`TaskData` to compare on
    your own. Returns the path of ``comparison.md``.
    """
    from .data import load_task

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise ConfigError("give at least one seed")
    out = Path(out)
    data = data if data is not None else load_task(protocol.task)
    if data.spec.kind not in ("classification", "multiple_choice"):
        raise ConfigError(f"compare scores classifiers; {data.spec.name} is {data.spec.kind}")
    if ood is None and protocol.ood_task:
        ood = load_task(protocol.ood_task)
    _check_protocol(out, protocol, overwrite)
    bench = Bench(protocol, out, data, ood, progress)
    for method in methods:
        for seed in seeds:
            _run_cell(bench, method, seed)
    return summarize(out, methods, seeds)


# ---- the summary: table, significance, figures ---------------------------------------------------------
def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _load_cells(out: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """Each method's finished cells, with the ECE floor of its test predictions added."""
    from pyro_bhpeft.analysis import metrics

    cells = {}
    for m in methods:
        found = []
        for s in seeds:
            if (_cell_dir(out, m, s) / "metrics.json").exists():
                cell = _cell(out, m, s)
                cell["ece_floor"] = metrics.ece_floor(_arrays_of(out, m, s)["test_probs"]).mean
                found.append(cell)
        if found:
            cells[m] = found
    return cells


def _arrays_of(out: Path, method: str, seed: int) -> dict[str, np.ndarray]:
    with np.load(_cell_dir(out, method, seed) / "predictions.npz") as f:
        return {k: f[k] for k in f.files}


def _table(cells: dict[str, list[dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    head = "| method | seeds | " + " | ".join(c for c, *_ in METRICS) + " |"
    lines, rows = [head, "|---|---|" + "---|" * len(METRICS)], []
    for method, found in cells.items():
        row: dict[str, Any] = {"method": method, "seeds": len(found)}
        cells_md = []
        for column, key, mult, digits in METRICS:
            mean, sd = _mean_sd([c.get(key) for c in found])
            row[f"{key}_mean"], row[f"{key}_sd"] = mean * mult, sd * mult
            cells_md.append("–" if math.isnan(mean) else
                            f"{mean * mult:.{digits}f} ± {sd * mult:.{digits}f}" if key not in ("trainable",)
                            else f"{mean:,.0f}")
        lines.append(f"| {method} | {len(found)} | " + " | ".join(cells_md) + " |")
        rows.append(row)
    return "\n".join(lines), rows


def _significance(out: Path, cells: dict[str, list[dict[str, Any]]], seeds: Sequence[int],
                  baseline: str = "lora") -> tuple[str, list[dict[str, Any]]]:
    """Paired tests of each method against ``baseline`` on the same test examples and seeds.

    Accuracy and NLL: per-example differences averaged over the seeds both methods have, sign-flip test
    of their mean. ECE: paired bootstrap over examples of the seed-averaged ECE difference. Holm's
    correction across the methods, per metric. Conditional on the fitted models (see ``analysis.stats``).
    """
    from pyro_bhpeft.analysis import stats

    if baseline not in cells:
        return f"(no {baseline} cells: no paired tests)", []
    rows = []
    for method in cells:
        shared = [s for s in seeds if (_cell_dir(out, method, s) / "metrics.json").exists()
                  and (_cell_dir(out, baseline, s) / "metrics.json").exists()]
        if method == baseline or not shared:
            continue
        correct, nll, probs_a, probs_b = [], [], [], []
        for s in shared:
            a, b = _arrays_of(out, method, s), _arrays_of(out, baseline, s)
            y = a["test_labels"].astype(int)
            pa, pb = a["test_probs"], b["test_probs"]
            idx = np.arange(len(y))
            correct.append((pa.argmax(1) == y).astype(float) - (pb.argmax(1) == y).astype(float))
            nll.append(-np.log(np.clip(pa[idx, y], 1e-12, None)) + np.log(np.clip(pb[idx, y], 1e-12, None)))
            probs_a.append(pa)
            probs_b.append(pb)
        tests = {"accuracy": stats.sign_flip_test(100 * np.mean(correct, axis=0)),
                 "nll": stats.sign_flip_test(np.mean(nll, axis=0)),
                 "ece": stats.paired_bootstrap_ece(probs_a, probs_b, y)}
        row: dict[str, Any] = {"method": method, "seeds": len(shared)}
        for name, t in tests.items():
            row.update({f"delta_{name}": t.difference, f"{name}_low": t.low, f"{name}_high": t.high, f"p_{name}": t.p})
        rows.append(row)
    for name in ("accuracy", "nll", "ece"):
        for row, adjusted in zip(rows, stats.holm([r[f"p_{name}"] for r in rows])):
            row[f"p_{name}_holm"] = adjusted
    lines = ["| method | seeds | Δ accuracy (pts) [95% CI] | p (Holm) | Δ NLL [95% CI] | p (Holm) | "
             "Δ ECE (pts) [95% CI] | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seeds']} | "
                     + " | ".join(f"{r[f'delta_{n}']:+.{d}f} [{r[f'{n}_low']:+.{d}f}, {r[f'{n}_high']:+.{d}f}] | "
                                  f"{_p(r[f'p_{n}_holm'])}" for n, d in (("accuracy", 2), ("nll", 3), ("ece", 2)))
                     + " |")
    return "\n".join(lines), rows


def _cell(out: Path, method: str, seed: int) -> dict[str, Any]:
    return json.loads((_cell_dir(out, method, seed) / "metrics.json").read_text())


def _p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def _figures(out: Path, methods: Sequence[str], seed: int) -> list[str]:
    from pyro_bhpeft.analysis import ScaleRow, plots

    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    arrays = {m: _arrays_of(out, m, seed) for m in methods if (_cell_dir(out, m, seed) / "predictions.npz").exists()}
    if not arrays:
        return []
    test = {m: (a["test_probs"], a["test_labels"]) for m, a in arrays.items()}
    written = [plots.reliability_diagram(test, figdir / "reliability.png"),
               plots.accuracy_coverage(test, figdir / "accuracy-coverage.png"),
               plots.confidence_histogram(test, figdir / "confidence.png")]
    with_ood = {m: a for m, a in arrays.items() if "ood_entropy" in a}
    if with_ood:
        written.append(plots.uncertainty_histogram({m: a["test_entropy"] for m, a in with_ood.items()},
                                                   {m: a["ood_entropy"] for m, a in with_ood.items()},
                                                   figdir / "ood-uncertainty.png"))
    for method in SCALE_METHODS:
        if method not in arrays:
            continue
        rows, figure = _scale_rows(out, method, seed), figdir / f"scales-{method}.png"
        if rows:
            written.append(plots.scale_forest([ScaleRow(**row) for row in rows], figure))
        elif figure.exists():  # a cell saved before scales.json: its figure was drawn from a fit since removed
            written.append(figure)
    return [str(Path(p).relative_to(out)) for p in written]


SCALE_METHODS = ("mean-field", "low-rank", "mean-field-lora", "laplace")


def _scale_rows(out: Path, method: str, seed: int) -> list[dict[str, Any]] | None:
    """Per-site posterior vs prior scales of a (method, seed) cell: from the cell, else from its fit."""
    from pyro_bhpeft.analysis import scale_table
    from .posterior import Posterior

    saved = _cell_dir(out, method, seed) / "scales.json"
    if saved.exists():
        return json.loads(saved.read_text())
    run = _posterior_dir(out, method, seed) if method in SCALE_METHODS else None
    return None if run is None else [asdict(row) for row in scale_table(Posterior.load(run))]


def _posterior_dir(out: Path, method: str, seed: int) -> Path | None:
    if method in ("laplace", "laplace-glm"):
        path = out / "fits" / f"laplace-seed{seed}"
        return path if path.exists() else None
    guide = {"mean-field": "mean-field", "mean-field-lora": "mean-field", "low-rank": "low-rank"}[method]
    hybrid = method != "mean-field-lora"
    for path in sorted((out / "fits").glob(f"{guide}-seed{seed}-*")):
        config = json.loads((path / "config.json").read_text())
        if (config["peft"].get("adapter") is not None) == hybrid:
            return path
    return None


def summarize(out: str | Path, methods: Sequence[str], seeds: Sequence[int]) -> Path:
    """Write ``comparison.md``, ``comparison.csv``, ``significance.csv`` and ``figures/`` from saved cells."""
    import csv
    import io

    out = Path(out)
    protocol = json.loads((out / "protocol.json").read_text())
    cells = _load_cells(out, methods, seeds)
    table, rows = _table(cells)
    sig_md, sig_rows = _significance(out, cells, seeds)
    figures = _figures(out, list(cells), seeds[0])
    for name, content in (("comparison.csv", rows), ("significance.csv", sig_rows)):
        buffer = io.StringIO()
        if content:
            writer = csv.DictWriter(buffer, fieldnames=list(content[0]))
            writer.writeheader()
            writer.writerows(content)
        write_text(out / name, buffer.getvalue())
    p = protocol
    epochs = f"{p['epochs']} epoch{'s' if p['epochs'] != 1 else ''}"
    steps = f" (at most {p['max_steps']} steps)" if p["max_steps"] else ""
    ood = f"`{p['ood_task']}` test" if p["ood_task"] else "none"
    lines = [f"# Comparison of inference schemes on `{p['task']}`", "",
             f"Backbone `{p['backbone']}`; {p['train_size']} training examples drawn at random (subset seed "
             f"{p.get('subset_seed', 0)}), {epochs}{steps}, batch {p['batch_size']}, Adam lr {p['lr']}, "
             f"{p['max_length']} tokens; {p['samples']} posterior samples; test: {p['eval_size']} random test "
             f"examples; OOD: {ood}. Seeds {', '.join(map(str, seeds))}; mean ± sd over seeds.", "",
             table, "",
             "ECE: 15 equal-width bins, in %. ECE floor: the ECE a perfectly calibrated model with the same "
             "confidences would show on these examples (finite-sample noise). sel. AUC: area under accuracy vs coverage (most certain first, by "
             "predictive entropy). OOD AUROC: predictive entropy separating OOD from test examples. train s "
             "includes post-hoc steps (Laplace GGN, temperature fit) and every ensemble member; peak MB is the "
             "process's peak resident memory during training.", "",
             "## Paired tests against deterministic LoRA (`lora`)", "",
             "Method minus `lora` on the same test examples, averaged over the shared seeds. Accuracy and NLL: "
             "sign-flip test of the mean per-example difference; ECE: paired bootstrap over examples (2,000 "
             "draws); 95% bootstrap intervals; p-values Holm-corrected across the methods, per metric. The tests "
             "are conditional on the fitted models (test-sample noise only); the ± over seeds above shows the "
             "training-seed spread.", "", sig_md, "",
             "## Methods", ""]
    lines += [f"- `{m}`: {METHODS[m].description}" for m in cells]
    lines += ["", "## Figures (seed %d)" % seeds[0], ""] + [f"![{f}]({f})" for f in figures]
    return write_text(out / "comparison.md", "\n".join(lines) + "\n")
