"""One (method, seed) cell: run it once, save it under ``cells/{method}-seed{seed}``, read it back.

A cell holds ``metrics.json`` (the metrics of its test predictions and its costs, and since 0.2 the protocol,
method settings and provenance it ran with: :func:`cell_record`), ``predictions.npz``
(probabilities, entropies, mutual information and labels per split; a regression's predictive means, variances,
epistemic variances and labels) and, for a method whose posterior
has per-site scales, ``scales.json`` (so the scale figure outlives the uncommitted fit).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..io import atomic_dir, write_json
from .bench import Bench, Scored
from .methods import METHODS
from .protocol import Protocol

__all__ = ["cell_dir", "is_done", "done_seeds", "run_cell", "cell_metrics", "cell_record", "load_metrics", "load_arrays", "scale_rows"]


def cell_dir(out: Path, method: str, seed: int) -> Path:
    return Path(out) / "cells" / f"{method}-seed{seed}"


def is_done(out: Path, method: str, seed: int) -> bool:
    """Whether the (method, seed) cell was saved (its metrics are written last, atomically with the rest)."""
    return (cell_dir(out, method, seed) / "metrics.json").exists()


def done_seeds(out: Path, method: str | None = None) -> list[int]:
    """The seeds of the cells saved in ``out``: ``method``'s, or any registered method's when None."""
    found = set()
    for path in (Path(out) / "cells").glob(f"{method or '*'}-seed*"):
        name, _, seed = path.name.rpartition("-seed")
        if seed.isdigit() and (name == method if method else name in METHODS) and is_done(out, name, int(seed)):
            found.add(int(seed))
    return sorted(found)


def run_cell(bench: Bench, method: str, seed: int) -> dict[str, Any]:
    """The metrics of the (method, seed) cell: read back if saved, else run, scored and saved."""
    path = cell_dir(bench.out, method, seed)
    if is_done(bench.out, method, seed):
        return load_metrics(bench.out, method, seed)
    print(f"\n== {method}, seed {seed}: {METHODS[method].description} ==", flush=True)
    torch.manual_seed(seed)
    bench.predict_seconds = 0.0
    scored = METHODS[method].run(bench, seed)
    _check_finite(scored, method, seed)
    result = cell_metrics(scored, predict_seconds=bench.predict_seconds, ood_shift=bench.ood_shift)
    result.update(cell_record(bench.protocol, method))
    scales = scale_rows(bench.out, method, seed, bench.protocol)
    with atomic_dir(path, overwrite=True) as stage:
        np.savez_compressed(stage / "predictions.npz", **_arrays(scored, ood_shift=bench.ood_shift))
        write_json(stage / "metrics.json", result)
        if scales:
            write_json(stage / "scales.json", scales)
    if "mse" in result:
        print(f"   MSE {result['mse']:.4f}  Gaussian NLL {result['nll']:.3f}  90% coverage "
              f"{100 * result['coverage90']:.1f}%", flush=True)
    else:
        print(f"   accuracy {100 * result['accuracy']:.2f}%  NLL {result['nll']:.3f}  ECE {result['ece']:.2f}%",
              flush=True)
    return result


def cell_record(protocol: Protocol, method: str) -> dict[str, Any]:
    """What a cell records beside its metrics, so it can be read without the session that made it: the
    protocol it ran under (train size, epochs, lr, samples, ...), the method's settings (its description,
    whether it predicts with a point estimate, the fit it builds on, and the posterior samples it predicts
    with where the method fixes its own), and its provenance (library, torch and Python versions, the git
    commit of the checkout and whether it had uncommitted changes, when available, and the time) with what its
    seconds depend on: the device, torch's threads, the machine's cores and its load averages over 1, 5 and 15
    minutes when the cell was saved (other jobs on the same cores make a cell's seconds rough)."""
    import datetime
    import platform

    entry = METHODS[method]
    samples = _samples(entry, protocol)
    settings = {"name": method, "description": entry.description, "point_mass": entry.point_mass,
                "base_fit": None if entry.base_fit is None else _jsonable(dict(entry.base_fit)), "post_hoc": entry.post_hoc,
                "samples": samples}
    return {"protocol": protocol.to_dict(), "method_settings": settings,
            "provenance": {**_versions(), "python": platform.python_version(),
                           "saved_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           **_machine()}}


def _machine() -> dict[str, Any]:
    """What a cell's seconds depend on: the device its models ran on (the comparison runs them on the CPU),
    torch's intra-op threads, the machine's cores and, where the OS reports them, its load averages."""
    import os

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every OS
        load = None
    return {"device": "cpu", "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": load}


def _samples(entry: Any, protocol: Protocol) -> int | None:
    """The posterior samples a method predicts with: its own ``samples`` (an attribute, or the ``samples`` its
    run closes over, as :meth:`Method.sampled` and TFB's do; None there means the protocol's), 0 for a point
    estimate, else None (the entry does not say; read its code)."""
    own = getattr(entry, "samples", None)
    code, closure = getattr(entry.run, "__code__", None), getattr(entry.run, "__closure__", None)
    if own is None and code is not None and closure and "samples" in code.co_freevars:
        own = closure[code.co_freevars.index("samples")].cell_contents or protocol.samples
    if entry.point_mass:
        return 0
    return own


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: mappings and sequences element-wise, dataclasses (a PEFT config) as dicts,
    anything else JSON cannot write as its ``repr``."""
    import dataclasses

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **_jsonable(dataclasses.asdict(value))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _versions() -> dict[str, Any]:
    """The library and torch versions and, from a git checkout, the commit and whether it was dirty."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    import pyro_bhpeft

    library = getattr(pyro_bhpeft, "__version__", None)
    if library is None:
        try:
            library = version("pyro-bhpeft")
        except PackageNotFoundError:
            pass
    out: dict[str, Any] = {"library_version": library, "torch_version": torch.__version__, "git_commit": None,
                           "git_dirty": None}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _is_regression(pred: Any) -> bool:
    from ..predict import RegressionPrediction

    return isinstance(pred, RegressionPrediction)  # mean and variance, not class probabilities


def _check_finite(scored: Scored, method: str, seed: int) -> None:
    """Refuse to save a cell whose predictions are not all finite probabilities (or finite means and positive
    variances: a regression) from a diverged fit, in one line."""
    for split, pred in scored.predictions.items():
        if _is_regression(pred):
            ok = torch.isfinite(pred.mean) & torch.isfinite(pred.variance) & (pred.variance > 0)
            what = "means or variances"
        else:
            ok = torch.isfinite(pred.probs).reshape(len(pred.probs), -1).all(1)
            what = "probabilities"
        bad = int((~ok).sum())
        if bad:
            raise ConfigError(f"{method} at seed {seed} predicted non-finite {what} for {bad} of "
                              f"{len(ok)} {split} examples (its fit diverged); the cell is not saved: lower "
                              "the method's learning rate or check its fit")


def cell_metrics(scored: Scored, predict_seconds: float, ood_shift: bool = False) -> dict[str, Any]:
    """Costs, notes and test metrics of one cell (classification metrics, selective AUC, mean mutual
    information, and the OOD AUROC of predictive entropy when there are OOD predictions), and the
    classification metrics of its validation predictions under ``validation`` when it has them. ``ood_shift``: the
    OOD task answers in the test task's label space, so its accuracy, NLL and ECE on its own labels are
    added (``ood_accuracy``, ``ood_nll``, ``ood_ece``)."""
    from pyro_bhpeft.analysis import metrics

    out: dict[str, Any] = {"train_seconds": scored.train_seconds, "predict_seconds": predict_seconds,
                           "peak_mb": scored.peak_mb, "trainable": scored.trainable, **scored.notes}
    test = scored.predictions["test"]
    if _is_regression(test):
        return {**out, **_regression_metrics(scored)}
    probs, labels = test.probs.numpy(), test.labels.numpy()
    out.update(metrics.classification_metrics(probs, labels))
    out["selective_auc"] = metrics.selective_auc(probs, labels, test.predictive_entropy.numpy())
    out["mutual_information"] = float(test.mutual_information.mean())
    if "validation" in scored.predictions:  # what a selection among methods reads (never the test split)
        val = scored.predictions["validation"]
        out["validation"] = metrics.classification_metrics(val.probs.numpy(), val.labels.numpy())
    if "ood" in scored.predictions:
        ood = scored.predictions["ood"]
        out["ood_auroc"] = metrics.ood_auroc(test.predictive_entropy.numpy(), ood.predictive_entropy.numpy())
        if ood_shift:
            shifted = metrics.classification_metrics(ood.probs.numpy(), ood.labels.numpy())
            out.update({f"ood_{key}": shifted[key] for key in ("accuracy", "nll", "ece")})
    return out


def _regression_metrics(scored: Scored) -> dict[str, Any]:
    """MSE, MAE, Gaussian NLL and 90 % interval coverage of the test predictions, the mean epistemic
    variance, and the same metrics of the validation predictions under ``validation``."""
    from pyro_bhpeft.analysis import metrics

    def scores(pred: Any) -> dict[str, float]:
        return metrics.regression_metrics(pred.mean.numpy(), pred.variance.numpy(), pred.labels.numpy())

    test = scored.predictions["test"]
    out = {**scores(test), "epistemic_variance": float(test.epistemic.mean())}
    if "validation" in scored.predictions:
        out["validation"] = scores(scored.predictions["validation"])
    return out


def _arrays(scored: Scored, ood_shift: bool = False) -> dict[str, np.ndarray]:
    arrays = {}
    for split, pred in scored.predictions.items():
        if _is_regression(pred):  # predictive mean, variance and its epistemic part, labels
            arrays.update({f"{split}_mean": pred.mean.numpy(), f"{split}_variance": pred.variance.numpy(),
                           f"{split}_epistemic": pred.epistemic.numpy()})
            if pred.labels is not None:
                arrays[f"{split}_labels"] = pred.labels.numpy()
            continue
        arrays[f"{split}_probs"] = pred.probs.numpy()
        arrays[f"{split}_entropy"] = pred.predictive_entropy.numpy()
        arrays[f"{split}_mi"] = pred.mutual_information.numpy()
        if pred.labels is not None and (split != "ood" or ood_shift):  # test and validation labels
            arrays[f"{split}_labels"] = pred.labels.numpy()
    return arrays


def load_metrics(out: Path, method: str, seed: int) -> dict[str, Any]:
    return json.loads((cell_dir(out, method, seed) / "metrics.json").read_text())


def load_arrays(out: Path, method: str, seed: int) -> dict[str, np.ndarray]:
    with np.load(cell_dir(out, method, seed) / "predictions.npz") as f:
        return {k: f[k] for k in f.files}


def scale_rows(out: Path, method: str, seed: int, protocol: Protocol) -> list[dict[str, Any]] | None:
    """Per-site posterior vs prior scales of a (method, seed) cell: from the cell, else from its saved
    posterior (:meth:`Method.posterior_dir`); None for a method without ``has_scales`` or no posterior."""
    from pyro_bhpeft.analysis import scale_table

    from ..posterior import Posterior

    saved = cell_dir(out, method, seed) / "scales.json"
    if saved.exists():
        return json.loads(saved.read_text())
    entry = METHODS[method]
    run = entry.posterior_dir(Path(out), protocol, seed) if entry.has_scales else None
    return None if run is None else [asdict(row) for row in scale_table(Posterior.load(run))]
