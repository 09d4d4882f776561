"""Run directories: a fitted posterior plus the recipe, data and history that produced it.

A run directory holds the posterior files (see :mod:`pyro_bhpeft.posterior`), with the run's facts in
``config.json``'s ``meta`` (recipe, where the data came from, its size and content hash, the parent
run) and the training curve in ``history.json``. It is written atomically: an interrupted fit leaves
the previous directory or none.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .data import DataError, load_files
from .data.splits import random_rows
from .infer import FitResult
from .io import atomic_dir, write_json
from .posterior import Posterior, read_config
from .predict import DEFAULT_SAMPLES
from .recipe import Recipe

__all__ = ["DataSource", "COLUMNS", "file_columns", "random_rows", "training_subset", "fit_run", "fit_identity", "checkpoint_path",
           "save_run", "load_run",
           "data_hash", "evaluate_split", "eval_loader", "evaluate_run", "predict_run", "run_meta", "update_run",
           "lineage", "format_lineage"]

# load_files' column arguments and their defaults (the one home of "text", "label", ...)
COLUMNS = {name: p.default for name, p in inspect.signature(load_files).parameters.items()
           if name.endswith("_column")}


def file_columns(given: Mapping[str, str | None] | None = None, saved: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
    """Every column argument of ``load_files``: the ``given`` one (not None), else the run's ``saved`` one,
    else ``load_files``' default. A run fitted with ``text_column="body"`` reads new files the same way."""
    given, saved = given or {}, saved or {}
    unknown = set(given) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown column argument(s) {', '.join(sorted(unknown))}; expected {', '.join(COLUMNS)}")
    return {name: given.get(name) or saved.get(name) or default for name, default in COLUMNS.items()}


def data_hash(dataset: Any) -> str:
    """Content hash of a dataset's columns (order-sensitive), to record what a run saw."""
    h = hashlib.sha256()
    for name in sorted(dataset.column_names):
        h.update(name.encode())
        h.update(json.dumps(dataset[name], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class DataSource(dict):
    """How to load a run's data again: ``{"task": name, "max_examples": n}`` or ``{"train": file, ...}``;
    ``train_size`` keeps a random subset of the training split drawn with ``subset_seed`` (a source
    without ``subset_seed`` was written when subsets were the first rows, and keeps them)."""

    def load(self):
        from pyro_bhpeft.data import load_task

        if "task" in self:
            data = load_task(self["task"], source=self.get("source", "auto"),
                             max_examples=self.get("max_examples"), seed=self.get("seed", 0))
        else:
            data = load_files(self["train"], eval_files=self.get("eval_files"), kind=self["kind"],
                              **self.get("columns", {}))
        if "train_size" in self and "subset_seed" not in self:  # written before subsets were random
            return training_subset(data, self["train_size"], seed=None)
        return training_subset(data, self.get("train_size"), seed=self.get("subset_seed", 0))


def training_subset(data: Any, n: int | None, seed: int | None = 0):
    """``data`` with a random ``n``-row subset of its training split (all of it when ``n`` is None)."""
    import datasets

    if n is None:
        return data
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the training size must be a positive integer, got {n!r}")
    kept = {k: (random_rows(v, n, seed) if k == "train" else v) for k, v in data.splits.items()}
    return type(data)(data.spec, datasets.DatasetDict(kept))


def run_meta(recipe: Recipe, source: DataSource, data: Any, parent: str | None = None) -> dict[str, Any]:
    train = data.splits["train"]
    return {"round": 1, "recipe": recipe.to_dict(), "source": dict(source), "task": data.spec.name, "kind": data.spec.kind,
            "label_names": list(data.spec.label_names), "num_choices": data.spec.num_choices,
            "data": {"name": data.spec.name, "size": len(train), "hash": data_hash(train)},
            "parent": parent, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def fit_run(recipe: Recipe, data: Any, out: str | Path, *, source: DataSource | None = None, prior: Any = None,
            backbone: Any = None, meta: dict[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
            extra: Callable[[FitResult], dict[str, Any]] | None = None, checkpoint_every: int = 0,
            resume: bool = False, device: Any = None) -> FitResult:
    """Train ``recipe`` on ``data``, record where the data came from (``source``) and any ``meta``, and save the
    run at ``out`` atomically (with ``extra(result)``'s JSON files): the one fit-and-save of the library.

    The fit checkpoints to :func:`checkpoint_path` every ``checkpoint_every`` steps and on Ctrl-C (raising
    :class:`~pyro_bhpeft.checkpoint.FitInterrupted`); ``resume`` continues from there. The checkpoint is
    removed once the run is saved."""
    from .checkpoint import Checkpoint
    from .distributed import is_main, world
    from .recipe import train

    world_size = world()[1]
    if world_size > 1 and (checkpoint_every or resume):
        raise ValueError("checkpoints are single-process for now; drop --checkpoint-every/--resume under torchrun")
    checkpoint = None if world_size > 1 else Checkpoint(
        checkpoint_path(out), every=checkpoint_every, resume=resume, identity=fit_identity(recipe, source))
    result = train(recipe, data, prior=prior, progress=progress, backbone=backbone, checkpoint=checkpoint,
                   device=device)
    if source is not None:
        result.posterior.meta.update(run_meta(recipe, source, data))
    result.posterior.meta.update(meta or {})
    if world_size > 1:
        result.posterior.meta["world_size"] = world_size
    if is_main():  # the other ranks hold the same posterior
        save_run(out, result, overwrite=overwrite, extra=extra(result) if extra else None)
    if checkpoint is not None:
        checkpoint.path.unlink(missing_ok=True)
    return result


def fit_identity(recipe: Recipe, source: DataSource | None = None) -> dict[str, Any]:
    """What a checkpoint must record to be resumed by a fit of ``recipe`` on ``source``."""
    return {"recipe": recipe.to_dict(), "source": dict(source or {})}


def checkpoint_path(out: str | Path) -> Path:
    """Where the fit of run ``out`` keeps its checkpoint: beside it, ``<out>.checkpoint.safetensors`` (safetensors
    plus JSON; the ``<out>.checkpoint.pt`` pickles of older versions are never read)."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoint.safetensors")


def save_run(path: str | Path, result: FitResult, *, overwrite: bool = False,
             extra: dict[str, Any] | None = None) -> Path:
    """Write posterior, history and any extra JSON files into ``path``, atomically."""
    with atomic_dir(path, overwrite=overwrite) as stage:
        result.posterior.write_to(stage)
        write_json(stage / "history.json", {
            "loss": result.history, "nll": result.nll, "kl": [None if k != k else k for k in result.kl],
            "kl_weight": result.kl_weights, "step_seconds": result.step_seconds, "seconds": result.seconds,
            "scale_steps": result.scale_steps, "scale_trace": result.scale_trace, "warnings": result.warnings})
        for name, content in (extra or {}).items():
            write_json(stage / name, content)
    return Path(path)


def load_run(path: str | Path, device: Any = None) -> tuple[Posterior, dict[str, Any]]:
    """The posterior of a run (on ``device``, default the CPU) and its meta (recipe, source, task)."""
    read_config(path)  # clear error first for a missing or corrupt run
    posterior = Posterior.load(path, device=device)
    return posterior, posterior.meta


def evaluate_split(posterior: Posterior, loader: Any, num_samples: int, *, seed: int = 0) -> dict[str, Any]:
    """Metrics of one split with ``num_samples`` posterior draws (0 = posterior mean)."""
    from pyro_bhpeft.analysis import metrics
    from pyro_bhpeft.predict import predict

    pred = predict(posterior, loader, num_samples=num_samples, seed=seed)
    if not posterior.model.predicts_classes:
        out = metrics.regression_metrics(pred.mean.numpy(), pred.variance.numpy(), pred.labels.numpy())
    else:
        out = metrics.classification_metrics(pred.probs.numpy(), pred.labels.numpy())
        out["mutual_information"] = float(pred.mutual_information.mean())
        out["predictive_entropy"] = float(pred.predictive_entropy.mean())
    out["num_samples"] = num_samples
    out["n"] = int(len(pred.labels)) if pred.labels is not None else 0
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}




def eval_loader(run: str | Path, *, split: str = "test", data_file: str | Path | None = None,
                columns: Mapping[str, str | None] | None = None, batch_size: int = 64, device: Any = None):
    """``(posterior, data, split, loader)`` to score run ``run`` on: ``split`` of the run's own data, or
    ``data_file`` (as split ``test``) read with the run's column names, each overridden by ``columns``.

    The data is checked before the model is loaded, so a bad file fails fast.
    """
    from .backbone import load_backbone
    from .data import make_loader, tokenize
    from .data.prompts import for_backbone

    meta = read_config(run).get("meta", {})
    if data_file:
        data = load_files(data_file, eval_files={"validation": data_file, "test": data_file}, kind=meta["kind"],
                          label_names=meta.get("label_names") or None,
                          **file_columns(columns, meta["source"].get("columns")))
        split = "test"
    else:
        data = DataSource(meta["source"]).load()
        if split not in data.splits:
            raise DataError(f"split {split!r} does not exist; this run's data has {', '.join(data.splits)}")
    posterior, _ = load_run(run, device)
    tokenizer = load_backbone(posterior.backbone_name).tokenizer
    data = for_backbone(data, posterior.model.backbone, tokenizer)
    max_length = Recipe.from_dict(meta["recipe"]).max_length
    return posterior, data, split, make_loader(tokenize(data, tokenizer, max_length)[split], batch_size)


def evaluate_run(run: str | Path, *, samples: int = DEFAULT_SAMPLES, **where: Any) -> dict[str, Any]:
    """``{"split", "samples": metrics with K draws, "mean_only": metrics of the posterior mean}`` of a saved
    run; ``where``: ``split``, ``data_file``, ``columns`` as in :func:`eval_loader`."""
    posterior, _, split, loader = eval_loader(run, **where)
    return {"split": split, "samples": evaluate_split(posterior, loader, samples),
            "mean_only": evaluate_split(posterior, loader, 0)}


def predict_run(run: str | Path, *, samples: int = DEFAULT_SAMPLES, **where: Any) -> list[dict[str, Any]]:
    """Per-example predictions of a saved run (:func:`pyro_bhpeft.predict.prediction_rows`); ``where`` as
    in :func:`eval_loader`."""
    from .predict import predict, prediction_rows

    posterior, data, split, loader = eval_loader(run, **where)
    rows = data.splits[split]
    texts = rows["text" if "text" in rows.column_names else "question"]
    return prediction_rows(predict(posterior, loader, num_samples=samples), texts,
                           posterior.meta.get("label_names") or ())


def update_run(parent: str | Path, source: DataSource, out: str | Path, *, temper: float = 1.0,
               overrides: dict[str, Any] | None = None, overwrite: bool = False, progress: bool = True) -> FitResult:
    """Fit a new round on ``source`` with the posterior of run ``parent`` as prior; writes run ``out``.

    The parent directory is only read. The new run records its parent, the data it saw, the prior
    it used and its round number; interrupted, it leaves nothing and can simply be rerun.
    """
    from .continual import posterior_prior

    parent = Path(parent).resolve()
    if Path(out).resolve() == parent:
        raise FileExistsError("the new round cannot overwrite its parent; choose another output directory")
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output directory or allow overwriting")
    previous, meta = load_run(parent)
    recipe = Recipe.from_dict(meta["recipe"]).with_(**(overrides or {}))
    data = source.load()
    if data.spec.kind != meta["kind"]:
        raise ValueError(f"the parent run is {meta['kind']} but the new data is {data.spec.kind}; "
                         "a round must keep the task kind")
    prior = posterior_prior(previous, temper=temper)
    facts = {**run_meta(recipe, source, data, parent=str(parent)), "round": int(meta.get("round", 1)) + 1,
             "prior_from": {"run": str(parent), "temper": temper}}
    return fit_run(recipe, data, out, prior=prior, meta=facts, overwrite=overwrite, progress=progress)


def lineage(run: str | Path) -> list[dict[str, Any]]:
    """The chain of rounds ending at ``run``, oldest first, each with its facts and saved metrics."""
    chain, seen = [], set()
    path: Path | None = Path(run).resolve()
    while path is not None:
        if path in seen:
            raise ValueError(f"run lineage loops at {path}")
        seen.add(path)
        meta = read_config(path).get("meta", {})
        metrics = {p.stem: json.loads(p.read_text()) for p in sorted(path.glob("metrics-*.json"))}
        chain.append({"run": str(path), "round": meta.get("round", 1), "data": meta.get("data"),
                      "guide": meta.get("recipe", {}).get("guide"), "created": meta.get("created"),
                      "prior_from": meta.get("prior_from"), "metrics": metrics})
        parent = meta.get("parent")
        path = Path(parent) if parent else None
    return chain[::-1]


def format_lineage(chain: list[dict[str, Any]]) -> str:
    """:func:`lineage` as text: one line per round (data, guide, prior), then its saved metrics indented."""
    lines = []
    for entry in chain:
        data, prior = entry["data"] or {}, entry["prior_from"]
        origin = "base" if not prior else f"posterior of round before (temper {prior['temper']:g})"
        lines.append(f"round {entry['round']}: {entry['run']}  data={data.get('name')} n={data.get('size')} "
                     f"hash={data.get('hash')}  guide={entry['guide']}  prior={origin}")
        for name, m in entry["metrics"].items():
            s = m.get("samples", m)
            lines.append(f"    {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in s.items() if isinstance(v, float)))
    return "\n".join(lines)
