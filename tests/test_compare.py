"""The comparison harness on a tiny saved model and the user's own files: every method runs, shared fits
are fitted once, finished cells are never recomputed, and the summary's numbers follow from the cells."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import pyro_bhpeft.baselines
import pyro_bhpeft.recipe
from pyro_bhpeft.cli import main
from pyro_bhpeft.compare import METHODS, Protocol, run_compare, summarize
from pyro_bhpeft.config import ConfigError
from pyro_bhpeft.data import load_files
from tiny import reviews


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare-data")
    train, test, ood = folder / "train.csv", folder / "test.csv", folder / "ood.csv"
    reviews(64).to_csv(train, index=False)
    reviews(24, seed=1).to_csv(test, index=False)
    pd.DataFrame({"review": [f"the weather was {w} cold" for w in ("very", "not", "a") * 8],
                  "sentiment": ["neg", "pos"] * 12}).to_csv(ood, index=False)
    data = load_files(train, eval_files={"validation": test, "test": test}, text_column="review",
                      label_column="sentiment")
    ood_data = load_files(ood, eval_files={"validation": ood, "test": ood}, text_column="review",
                          label_column="sentiment")
    return data, ood_data


def protocol(tiny_backbone, **changes) -> Protocol:
    base = Protocol(task="reviews", backbone=tiny_backbone, train_size=48, eval_size=24, epochs=1, batch_size=8,
                    max_length=12, samples=3, ensemble_size=2, laplace_examples=6, max_steps=3, ood_task="")
    return base if not changes else Protocol(**{**base.__dict__, **changes})


def cells_csv(path):
    with open(path) as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def predictions(out, method, seed):
    with np.load(out / "cells" / f"{method}-seed{seed}" / "predictions.npz") as f:
        return {k: f[k] for k in f.files}


def test_every_method_runs_shares_fits_and_resumes_without_refitting(tiny_backbone, task_files, tmp_path, monkeypatch):
    data, ood = task_files
    out = tmp_path / "cmp"
    report = run_compare(protocol(tiny_backbone), out, seeds=(0, 1), data=data, ood=ood, progress=False)
    text = report.read_text()
    rows = cells_csv(out / "comparison.csv")
    assert set(rows) == set(METHODS) and all(int(r["seeds"]) == 2 for r in rows.values())
    assert all(f"| {m} | 2 |" in text for m in METHODS)
    for m in METHODS:
        cell = json.loads((out / "cells" / f"{m}-seed0" / "metrics.json").read_text())
        assert 0 <= cell["accuracy"] <= 1 and cell["nll"] > 0 and 0 <= cell["ood_auroc"] <= 1
        assert cell["trainable"] > 0 and cell["predict_seconds"] > 0

    # the deterministic LoRA fit is made once per seed and reused by temperature, laplace and the ensemble
    fits = sorted(p.name for p in (out / "fits").iterdir())
    plain = [f for f in fits if f.startswith("mle-") and json.loads(
        (out / "fits" / f / "config.json").read_text())["meta"]["recipe"]["dropout"] is False]
    assert sorted(f.split("-")[1] for f in plain) == ["seed0", "seed1", "seed1000", "seed1001"]

    # the sampled and the linearised Laplace predictives share one Laplace fit per seed
    for seed in (0, 1):
        sampled, glm = (json.loads((out / "cells" / f"{m}-seed{seed}" / "metrics.json").read_text())
                        for m in ("laplace", "laplace-glm"))
        assert sampled["prior_precision"] == glm["prior_precision"] and sampled["train_seconds"] == glm["train_seconds"]
    # known answers: temperature keeps every argmax, so its accuracy and per-example correctness equal lora's
    lora, temp = predictions(out, "lora", 0), predictions(out, "temperature", 0)
    np.testing.assert_array_equal(lora["test_probs"].argmax(1), temp["test_probs"].argmax(1))
    sig = cells_csv(out / "significance.csv")
    assert float(sig["temperature"]["delta_accuracy"]) == 0.0 and float(sig["temperature"]["p_accuracy_holm"]) == 1.0
    assert "lora" not in sig and set(sig) == set(METHODS) - {"lora"}
    # the table's mean is the mean of the cells
    accs = [json.loads((out / "cells" / f"map-seed{s}" / "metrics.json").read_text())["accuracy"] for s in (0, 1)]
    assert float(rows["map"]["accuracy_mean"]) == pytest.approx(100 * np.mean(accs))
    for figure in ("reliability", "accuracy-coverage", "confidence", "ood-uncertainty", "scales-mean-field",
                   "scales-low-rank", "scales-mean-field-lora", "scales-laplace"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
    # each Bayesian cell keeps its per-site scales, so the figures are redrawn without the fits on disk
    scales = json.loads((out / "cells" / "mean-field-seed0" / "scales.json").read_text())
    assert scales and all(0 < row["posterior_scale"] and row["prior_scale"] == 1.0 for row in scales)
    shutil.rmtree(out / "fits")
    for figure in ("scales-mean-field", "scales-low-rank", "scales-mean-field-lora", "scales-laplace"):
        (out / "figures" / f"{figure}.png").unlink()
    text = summarize(out, list(METHODS), (0, 1)).read_text()
    for figure in ("scales-mean-field", "scales-low-rank", "scales-mean-field-lora", "scales-laplace"):
        assert f"figures/{figure}.png" in text and (out / "figures" / f"{figure}.png").stat().st_size > 1000

    # resuming fits and trains nothing, and leaves the cells as they were
    before = {p: p.read_bytes() for p in (out / "cells").rglob("metrics.json")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(pyro_bhpeft.recipe, "train", refuse)
    monkeypatch.setattr(pyro_bhpeft.baselines, "train_peft_lora", refuse)
    monkeypatch.setattr(pyro_bhpeft.baselines, "laplace_posterior", refuse)
    run_compare(protocol(tiny_backbone), out, seeds=(0, 1), data=data, ood=ood, progress=False)
    assert before == {p: p.read_bytes() for p in (out / "cells").rglob("metrics.json")}


def test_a_one_member_ensemble_is_deterministic_lora(tiny_backbone, task_files, tmp_path):
    data, _ = task_files
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone, ensemble_size=1), out, methods=("lora", "ensemble"), seeds=(0,), data=data,
                progress=False)
    np.testing.assert_allclose(predictions(out, "ensemble", 0)["test_probs"], predictions(out, "lora", 0)["test_probs"])


def test_another_protocol_in_the_same_directory_is_refused_unless_overwrite(tiny_backbone, task_files, tmp_path):
    data, _ = task_files
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone), out, methods=("lora",), seeds=(0,), data=data, progress=False)
    with pytest.raises(FileExistsError, match="different protocol"):
        run_compare(protocol(tiny_backbone, epochs=2), out, methods=("lora",), seeds=(0,), data=data, progress=False)
    run_compare(protocol(tiny_backbone, epochs=2), out, methods=("lora",), seeds=(0,), data=data, progress=False,
                overwrite=True)
    assert json.loads((out / "protocol.json").read_text())["epochs"] == 2


def test_bad_methods_and_tasks_are_clear_errors(tiny_backbone, task_files, tmp_path, capsys):
    data, _ = task_files
    with pytest.raises(ConfigError, match="unknown comparison method.*choose from"):
        run_compare(protocol(tiny_backbone), tmp_path / "x", methods=("lora", "dropout"), data=data, progress=False)
    assert main(["compare", "--task", "reviews", "--methods", "lora,nope", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown comparison method" in err[0]
    assert main(["compare", "--task", "no-such-task", "--out", str(tmp_path / "z")]) == 2
    assert "no-such-task" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    for bad in ({"max_steps": 0}, {"train_size": 0}, {"samples": 2.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            protocol(tiny_backbone, **bad)


@pytest.mark.slow
def test_compare_on_the_real_packaged_model_and_task(tmp_path):
    out = tmp_path / "cmp"
    code = main(["compare", "--task", "sentiment", "--methods", "lora,laplace,mean-field", "--seeds", "1",
                 "--max-steps", "2", "--train-size", "48", "--eval-size", "24", "--laplace-examples", "4",
                 "--out", str(out)])
    assert code == 0
    rows = cells_csv(out / "comparison.csv")
    assert set(rows) == {"lora", "laplace", "mean-field"}
    cell = json.loads((out / "cells" / "laplace-seed0" / "metrics.json").read_text())
    assert cell["prior_precision"] > 0 and 0 <= cell["ood_auroc"] <= 1  # OOD: the r8 news task
    assert (out / "figures" / "scales-laplace.png").exists()
    # a comparison's fits are ordinary runs: they can be diagnosed
    fit = next((out / "fits").glob("mean-field-seed0-*"))
    assert main(["diagnose", str(fit), "--draws", "10", "--examples", "8"]) == 0
    assert json.loads((fit / "diagnostics" / "diagnostics.json").read_text())["num_data"] == 48


def _three_class(n, seed):
    g = np.random.default_rng(seed)
    words = {"pos": ("good", "great"), "neg": ("bad", "awful"), "neutral": ("fine", "film")}
    labels = g.choice(list(words), n)
    return pd.DataFrame({"text": [f"the movie was {' '.join(g.choice(words[y], 2))}" for y in labels], "label": labels})


def _choice_rows(n, seed):
    g = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        answer = int(g.integers(0, 3))
        choices = [str(w) for w in g.choice(["bad", "awful", "poor", "cold"], 3, replace=False)]
        choices[answer] = str(g.choice(["good", "great", "fine"]))
        rows.append({"question": "the movie was", "choices": choices, "answer": answer})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("kind", ["three-class", "multiple-choice"])
def test_every_method_runs_on_more_classes_and_on_multiple_choice(kind, tiny_backbone, tmp_path):
    train, val, test = (tmp_path / f"{s}.jsonl" for s in ("train", "val", "test"))
    make = _three_class if kind == "three-class" else _choice_rows
    for path, (n, seed) in zip((train, val, test), ((48, 0), (18, 1), (18, 2))):
        make(n, seed).to_json(path, orient="records", lines=True)
    if kind == "three-class":
        data = load_files(train, eval_files={"validation": val, "test": test})
    else:
        data = load_files(train, eval_files={"validation": val, "test": test}, kind="multiple_choice",
                          label_column="answer")
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone, eval_size=18), out, seeds=(0,), data=data, progress=False)
    rows = cells_csv(out / "comparison.csv")
    assert set(rows) == set(METHODS)
    classes = 3
    for m in METHODS:
        probs = predictions(out, m, 0)["test_probs"]
        assert probs.shape == (18, classes)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert 0 <= float(rows[m]["accuracy_mean"]) <= 100
