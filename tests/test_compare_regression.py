"""The comparison harness on a regression (the suite's VADER ratings): the methods that predict a Gaussian run,
their cells' metrics follow from the saved means and variances, the variance factor fitted on validation is
the closed form, the paired tests are differences of the saved per-example losses, and the class-only methods
are refused before any cell."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import reviews
from pyro_bhpeft.analysis import metrics
from pyro_bhpeft.baselines import fit_variance_scale, variance_scaled
from pyro_bhpeft.compare import METHODS, Protocol, run_compare
from pyro_bhpeft.config import ConfigError
from pyro_bhpeft.data import load_files
from pyro_bhpeft.predict import RegressionPrediction

REAL = [m for m in METHODS if METHODS[m].regression]


def _ratings(n: int, seed: int) -> pd.DataFrame:
    frame = reviews(n, seed=seed)
    noise = np.random.default_rng(seed).normal(0, 0.3, n)
    return pd.DataFrame({"review": frame["review"], "rating": np.where(frame["sentiment"] == "pos", 3.5, 1.5) + noise})


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ratings")
    paths = {}
    for name, n, seed in (("train", 64, 0), ("validation", 24, 1), ("test", 24, 2)):
        paths[name] = folder / f"{name}.csv"
        _ratings(n, seed).to_csv(paths[name], index=False)
    return load_files(paths["train"], eval_files={"validation": paths["validation"], "test": paths["test"]},
                      kind="regression", text_column="review", label_column="rating")


def protocol(tiny_backbone, **changes) -> Protocol:
    return Protocol(**{**dict(task="ratings", backbone=tiny_backbone, train_size=48, eval_size=24, epochs=1,
                              batch_size=8, max_length=12, samples=3, ensemble_size=2, max_steps=3, ood_task=""),
                       **changes})


@pytest.fixture(scope="module")
def compared(tiny_backbone, ratings, tmp_path_factory):
    out = tmp_path_factory.mktemp("compared-regression") / "cmp"
    run_compare(protocol(tiny_backbone), out, methods=REAL, seeds=(0,), data=ratings, progress=False)
    return out


def arrays(out, method):
    with np.load(out / "cells" / f"{method}-seed0" / "predictions.npz") as f:
        return {k: f[k] for k in f.files}


def cell(out, method):
    return json.loads((out / "cells" / f"{method}-seed0" / "metrics.json").read_text())


def test_the_methods_that_predict_a_gaussian_are_those_marked_for_regression():
    assert REAL == ["lora", "map", "ensemble", "temperature", "mean-field", "mean-field-top2", "low-rank",
                    "mean-field-lora", "blob"]


@pytest.mark.parametrize("method", REAL)
def test_a_regression_cells_metrics_are_those_of_its_saved_means_and_variances(compared, method):
    c, a = cell(compared, method), arrays(compared, method)
    for split, scores in (("test", c), ("validation", c["validation"])):
        mean, var, y = a[f"{split}_mean"], a[f"{split}_variance"], a[f"{split}_labels"]
        assert scores["mse"] == pytest.approx(float(np.mean((mean - y) ** 2)), rel=1e-5)
        assert scores["nll"] == pytest.approx(float(np.mean(0.5 * np.log(2 * np.pi * var) + (y - mean) ** 2 / (2 * var))),
                                              rel=1e-5)
        assert scores["coverage90"] == metrics.interval_coverage(mean, var, y, 0.9)
    assert c["epistemic_variance"] == pytest.approx(float(a["test_epistemic"].mean()), rel=1e-5, abs=1e-12)
    assert (c["epistemic_variance"] == 0) == METHODS[method].point_mass  # the point estimates have no spread


def test_the_variance_factor_is_the_closed_form_on_loras_validation_predictions(compared):
    lora, scaled = arrays(compared, "lora"), arrays(compared, "temperature")
    factor = float(np.mean((lora["validation_labels"] - lora["validation_mean"]) ** 2 / lora["validation_variance"]))
    assert cell(compared, "temperature")["variance_scale"] == pytest.approx(factor, rel=1e-5)
    np.testing.assert_array_equal(scaled["test_mean"], lora["test_mean"])
    np.testing.assert_allclose(scaled["test_variance"], lora["test_variance"] * factor, rtol=1e-5)


def test_the_variance_factor_minimises_the_gaussian_nll():
    g = torch.Generator().manual_seed(0)
    mean, var = torch.randn(50, generator=g), torch.rand(50, generator=g) + 0.1
    y = mean + torch.randn(50, generator=g) * 2.0  # intervals too narrow: the factor widens them
    pred = RegressionPrediction(mean, var, var, torch.zeros(50), y, 0)
    best = fit_variance_scale(pred)

    def nll(s: float) -> float:
        p = variance_scaled(pred, s)
        return metrics.gaussian_nll(p.mean.numpy(), p.variance.numpy(), y.numpy())

    assert best > 1 and nll(best) < nll(best * 1.05) and nll(best) < nll(best / 1.05)


def test_the_paired_tests_are_differences_of_the_saved_losses(compared):
    with open(compared / "significance.csv") as f:
        rows = {r["method"]: r for r in __import__("csv").DictReader(f)}
    assert set(rows) == set(REAL) - {"lora"}
    for method in rows:
        delta = float(rows[method]["delta_squared_error"])
        assert delta == pytest.approx(cell(compared, method)["mse"] - cell(compared, "lora")["mse"], rel=1e-4, abs=1e-6)
        assert float(rows[method]["delta_nll"]) == pytest.approx(cell(compared, method)["nll"] - cell(compared, "lora")["nll"],
                                                                rel=1e-4, abs=1e-6)
    text = (compared / "comparison.md").read_text()
    assert "| method | n | MSE | MAE | Gaussian NLL | 90% coverage % |" in text and "ECE" not in text
    assert (compared / "figures" / "interval-coverage.png").exists() and "![figures/interval-coverage.png]" in text


def test_a_one_member_ensemble_is_the_lora_gaussian(tiny_backbone, ratings, tmp_path):
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone, ensemble_size=1), out, methods=("lora", "ensemble"), seeds=(0,), data=ratings,
                progress=False)
    lora, ensemble = arrays(out, "lora"), arrays(out, "ensemble")
    for key in ("test_mean", "test_variance"):
        np.testing.assert_allclose(ensemble[key], lora[key], rtol=1e-6)
    assert not ensemble["test_epistemic"].any()


def test_class_only_methods_are_refused_on_a_regression_before_any_cell(tiny_backbone, ratings, tmp_path):
    with pytest.raises(ConfigError, match=r"^tfb, lora-llla score classes only; .* leave them out"):
        run_compare(protocol(tiny_backbone), tmp_path / "cmp", methods=("lora", "tfb", "lora-llla"), seeds=(0,),
                    data=ratings, progress=False)
    assert not (tmp_path / "cmp" / "cells").exists()


@pytest.mark.slow
def test_compare_on_the_packaged_ratings_defaults_to_the_methods_that_predict_a_gaussian(tiny_backbone, tmp_path):
    from pyro_bhpeft.cli import main

    main(["compare", "--task", "vader-movie", "--backbone", tiny_backbone, "--train-size", "16", "--eval-size", "8",
          "--max-steps", "1", "--seeds", "1", "--max-length", "12", "--batch-size", "8", "--samples", "2",
          "--out", str(tmp_path / "cmp")])
    assert sorted(p.name for p in (tmp_path / "cmp" / "cells").iterdir()) == sorted(f"{m}-seed0" for m in REAL)
