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
from .posterior import Posterior, is_run, read_config
from .predict import DEFAULT_SAMPLES
from .recipe import Recipe

__all__ = ["DataSource", "COLUMNS", "file_columns", "random_rows", "training_subset", "fit_run", "fit_identity", "run_samples",
           "checkpoint_path",
           "save_run", "load_run",
           "data_hash", "source_files", "file_fingerprint", "recorded_data", "run_kind", "evaluate_split", "eval_loader",
           "evaluate_run", "predict_run", "run_meta", "update_run",
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
            extra = {k: self[k] for k in ("delimiter", "drop_unseen") if self.get(k)}
            data = load_files(self["train"], eval_files=self.get("eval_files"), kind=self.get("kind"),
                              **self.get("columns", {}), **extra)
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


def source_files(source: Mapping[str, Any]) -> list[str]:
    """The files a file source reads: its training file, then its evaluation files."""
    if "train" not in source:
        return []
    return [source["train"], *(source.get("eval_files") or {}).values()]


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of a file's bytes: what a run records of each data file it read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": h.hexdigest()}


def _vouched(name: str, recorded: Mapping[str, Any]) -> bool:
    """Whether ``name`` is an absolute path (no ``..``) to a regular file with the size and hash the run recorded:
    a file is hashed only once its size matches, and never parsed or shown before it matches."""
    path = Path(name)
    if not path.is_absolute() or ".." in path.parts or not isinstance(recorded.get(name), dict) or not path.is_file():
        return False
    if path.stat().st_size != recorded[name].get("bytes"):
        return False
    return file_fingerprint(path) == recorded[name]


def recorded_data(run: str | Path, meta: Mapping[str, Any]):
    """The data run ``run`` was fitted on, as its config records it, read only where that is safe: a packaged
    task (never the network), or the very files the fit read (absolute paths whose size and hash match the
    recorded ones). Anything else is one line asking for the file on the command line."""
    source = meta.get("source") or {}
    if "task" in source:
        if source.get("source", "auto") not in ("auto", "package"):
            raise DataError(f"{run} records its data as task {source['task']!r} from {source['source']!r}; a run's "
                            "config never sends pyro-bhpeft to the network: pass --data FILE")
        return DataSource(source).load()
    if "train" not in source:
        raise DataError(f"{run} does not record the data it was fitted on (saved from Python?); pass --data FILE")
    for name in source_files(source):
        if not _vouched(str(name), meta.get("files") or {}):
            raise DataError(f"{run} names the data file {name}, which is missing, changed since the fit or not "
                            "recorded by it, so it is not read; pass --data FILE to choose the file")
    return DataSource(source).load()


def run_kind(run: str | Path, config: Mapping[str, Any]) -> str:
    """The task kind of a saved run: its meta's, else the one its model records (runs saved from Python)."""
    kind = (config.get("meta") or {}).get("kind") or config.get("task")
    if not kind:
        raise DataError(f"{run} does not record its task kind (saved by an older version from Python); refit it "
                        "with `pyro-bhpeft fit`, or save it with meta={'kind': ...}")
    return kind


def run_meta(recipe: Recipe, source: DataSource, data: Any, parent: str | None = None) -> dict[str, Any]:
    train = data.splits["train"]
    files = {str(name): file_fingerprint(name) for name in source_files(source) if Path(name).is_file()}
    return {"round": 1, "recipe": recipe.to_dict(), "source": dict(source), "files": files,
            "task": data.spec.name, "kind": data.spec.kind,
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
    from .checkpoint import Checkpoint, check_resumable
    from .distributed import is_main, world
    from .recipe import train

    world_size = world()[1]
    if world_size > 1 and (checkpoint_every or resume):
        raise ValueError("checkpoints are single-process for now; drop --checkpoint-every/--resume under torchrun")
    checkpoint = None if world_size > 1 else Checkpoint(
        checkpoint_path(out), every=checkpoint_every, resume=resume, identity=fit_identity(recipe, source))
    if checkpoint is not None and resume:
        check_resumable(checkpoint)  # before the backbone loads: a missing or foreign checkpoint is one line
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
    with atomic_dir(path, overwrite=overwrite, replaceable=is_run) as stage:
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
    """Metrics of one split with ``num_samples`` posterior draws (0 = posterior mean); a language model's are
    those of its response tokens (:func:`pyro_bhpeft.language.token_metrics`)."""
    from pyro_bhpeft.analysis import metrics
    from pyro_bhpeft.predict import predict

    if posterior.model.task == "language_model":
        from .language import token_metrics

        out = token_metrics(posterior, loader, num_samples=num_samples, seed=seed)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}
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




def run_data(run: str | Path, *, split: str = "test", data_file: str | Path | None = None,
             columns: Mapping[str, str | None] | None = None, delimiter: str | None = None, drop_unseen: bool = False,
             labels: bool = True, tell: Callable[[str], None] | None = None):
    """``(data, split)`` to score run ``run`` on: ``split`` of the run's own data, or ``data_file`` (as split
    ``test``) read with the run's column names, each overridden by ``columns``. Without ``labels`` (predicting)
    the file's label column (a language model's response) is optional and unseen classes are kept, unlabelled;
    with them an unseen class is an error unless ``drop_unseen``. ``tell`` hears the data's notes and warnings."""
    from .data import TaskSpec, load_eval_file

    config = read_config(run)
    meta = config.get("meta") or {}
    if data_file:
        kind, names = run_kind(run, config), tuple(meta.get("label_names") or ())
        classes = (config.get("model") or {}).get("kwargs", {}).get("num_labels")
        if not names and kind == "classification" and isinstance(classes, int):
            names = tuple(str(i) for i in range(classes))  # saved from Python without class names: ids 0..K-1
            if tell is not None:
                tell(f"{run} records no class names; labels are read as class ids 0..{classes - 1}")
        spec = TaskSpec(meta.get("task") or Path(data_file).stem, kind, label_names=names,
                        num_choices=meta.get("num_choices") or 0)
        given = file_columns(columns, (meta.get("source") or {}).get("columns"))
        data = load_eval_file(data_file, spec, columns=given, require_labels=labels, drop_unseen=drop_unseen,
                              delimiter=delimiter)
        split = "test"
    else:
        data = recorded_data(run, meta)
        if split not in data.splits:
            raise DataError(f"split {split!r} does not exist; this run's data has {', '.join(data.splits)}")
    for line in [*getattr(data, "notes", ()), *(f"warning: {w}" for w in getattr(data, "warnings", ()))]:
        if tell is not None:
            tell(line)
    return data, split


def eval_loader(run: str | Path, *, split: str = "test", data_file: str | Path | None = None,
                columns: Mapping[str, str | None] | None = None, batch_size: int = 64, device: Any = None,
                delimiter: str | None = None, drop_unseen: bool = False, labels: bool = True,
                tell: Callable[[str], None] | None = None):
    """``(posterior, data, split, loader)`` to score run ``run`` on: the data of :func:`run_data` (the same
    arguments), tokenised for the run's backbone.

    The data is checked before the model is loaded, so a bad file fails fast.
    """
    from .backbone import load_tokenizer
    from .data import make_loader, tokenize
    from .data.prompts import for_backbone

    data, split = run_data(run, split=split, data_file=data_file, columns=columns, delimiter=delimiter,
                           drop_unseen=drop_unseen, labels=labels, tell=tell)
    meta = read_config(run).get("meta") or {}
    posterior, _ = load_run(run, device)
    tokenizer = load_tokenizer(posterior.backbone_name)
    data = for_backbone(data, posterior.model.backbone, tokenizer)
    max_length = Recipe.from_dict(meta["recipe"]).max_length if meta.get("recipe") else Recipe.max_length
    return posterior, data, split, make_loader(tokenize(data, tokenizer, max_length)[split], batch_size)


def run_samples(posterior: Posterior) -> int:
    """The posterior draws a run predicts with by default: its recipe's (:attr:`Recipe.samples`)."""
    recipe = posterior.meta.get("recipe")
    return Recipe.from_dict(recipe).samples if recipe else DEFAULT_SAMPLES


def evaluate_run(run: str | Path, *, samples: int | None = None, **where: Any) -> dict[str, Any]:
    """``{"split", "samples": metrics with K draws (default: the run's recipe's), "mean_only": metrics of the
    posterior mean}`` of a saved run; ``where``: ``split``, ``data_file``, ``columns`` as in :func:`eval_loader`."""
    posterior, _, split, loader = eval_loader(run, **where)
    samples = run_samples(posterior) if samples is None else samples
    return {"split": split, "samples": evaluate_split(posterior, loader, samples),
            "mean_only": evaluate_split(posterior, loader, 0)}


def predict_run(run: str | Path, *, samples: int | None = None, mode: str = "sample",
                **where: Any) -> list[dict[str, Any]]:
    """Per-example predictions of a saved run (:func:`pyro_bhpeft.predict.prediction_rows`) with ``samples`` draws
    (default: the run's recipe's) in predictive ``mode``
    (:mod:`pyro_bhpeft.modes`; ``where["tell"]``, when given, hears which mode ``auto`` took); ``where`` as in
    :func:`eval_loader`."""
    from .modes import predict_with, resolve_mode
    from .predict import prediction_rows

    posterior, data, split, loader = eval_loader(run, labels=False, **where)
    rows = data.splits[split]
    texts = rows["text" if "text" in rows.column_names else "question"]
    used = resolve_mode(posterior, mode)
    if where.get("tell"):
        where["tell"](f"predictive mode: {used}" + (" (auto)" if mode == "auto" else ""))
    pred = predict_with(posterior, loader, used, num_samples=run_samples(posterior) if samples is None else samples)
    unlabelled = pred.labels is None
    out = prediction_rows(pred, texts, posterior.meta.get("label_names") or ())
    return [{k: v for k, v in row.items() if k != "label"} for row in out] if unlabelled else out


def update_run(parent: str | Path, source: DataSource, out: str | Path, *, temper: float = 1.0,
               overrides: dict[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
               tell: Callable[[str], None] | None = None) -> FitResult:
    """Fit a new round on ``source`` with the posterior of run ``parent`` as prior; writes run ``out``.

    The parent directory is only read. The new run records its parent, the data it saw, the prior
    it used and its round number; interrupted, it leaves nothing and can simply be rerun. The round keeps the
    parent's recipe; ``tell`` hears a warning when that recipe is one measured to forget across rounds
    (:func:`~pyro_bhpeft.recipe.rounds_warning`).
    """
    from .continual import posterior_prior
    from .recipe import rounds_warning

    parent = Path(parent).resolve()
    if Path(out).resolve() == parent:
        raise FileExistsError("the new round cannot overwrite its parent; choose another output directory")
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output directory or allow overwriting")
    kind = run_kind(parent, read_config(parent))
    previous, meta = load_run(parent)
    # a parent saved from Python may record no recipe: its backbone, with the library's defaults
    saved = Recipe.from_dict(meta["recipe"]) if meta.get("recipe") else Recipe(backbone=previous.backbone_name)
    recipe = saved.with_(**(overrides or {}))
    if tell is not None and (line := rounds_warning(recipe)):
        tell(f"warning: {line}")
    data = source.load()
    if data.spec.kind != kind:
        raise ValueError(f"the parent run is {kind} but the new data is {data.spec.kind}; "
                         "a round must keep the task kind")
    prior = posterior_prior(previous, temper=temper)
    facts = {**run_meta(recipe, source, data, parent=str(parent)), "round": int(meta.get("round", 1)) + 1,
             "prior_from": {"run": str(parent), "temper": temper}}
    return fit_run(recipe, data, out, prior=prior, meta=facts, overwrite=overwrite, progress=progress)


def lineage(run: str | Path) -> list[dict[str, Any]]:
    """The chain of rounds ending at ``run``, oldest first, each with its facts and the metrics of its own data
    (evaluations on other files, which carry ``data_file``, are not the run's). A parent is followed only when
    recorded as an absolute path without ``..`` (as ``update`` records it); otherwise the chain ends there."""
    chain, seen = [], set()
    path: Path | None = Path(run).resolve()
    while path is not None:
        if path in seen:
            raise ValueError(f"run lineage loops at {path}")
        seen.add(path)
        meta = read_config(path).get("meta", {})
        metrics = {}
        for file in sorted(path.glob("metrics-*.json")):
            content = json.loads(file.read_text())
            if isinstance(content, dict) and "data_file" not in content:
                metrics[file.stem] = content
        chain.append({"run": str(path), "round": meta.get("round", 1), "data": meta.get("data"),
                      "guide": (meta.get("recipe") or {}).get("guide"), "created": meta.get("created"),
                      "prior_from": meta.get("prior_from"), "metrics": metrics})
        parent = meta.get("parent")
        path = None
        if isinstance(parent, str) and parent:
            if not Path(parent).is_absolute() or ".." in Path(parent).parts:
                chain[-1]["unfollowed_parent"] = parent
            else:
                path = Path(parent)
    return chain[::-1]


def format_lineage(chain: list[dict[str, Any]]) -> str:
    """:func:`lineage` as text: one line per round (data, guide, prior), then its saved metrics indented."""
    lines = []
    for entry in chain:
        data, prior = entry["data"] or {}, entry["prior_from"]
        origin = "base" if not prior else f"posterior of round before (temper {prior['temper']:g})"
        if "unfollowed_parent" in entry:
            lines.append(f"(parent recorded as {entry['unfollowed_parent']!r}, not an absolute path: not followed)")
        lines.append(f"round {entry['round']}: {entry['run']}  data={data.get('name')} n={data.get('size')} "
                     f"hash={data.get('hash')}  guide={entry['guide']}  prior={origin}")
        for name, m in entry["metrics"].items():
            s = m.get("samples", m)
            lines.append(f"    {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in s.items() if isinstance(v, float)))
    return "\n".join(lines)
