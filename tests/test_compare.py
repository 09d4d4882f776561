"""The comparison harness on a tiny saved model and the user's own files: every method runs, shared fits
are fitted once under their recipe's key, finished cells are never recomputed, the summary's numbers
follow from the cells, and a method registered from outside the package runs like a built-in."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pyro_bhpeft.baselines
import pyro_bhpeft.recipe
from pyro_bhpeft.analysis import metrics
from pyro_bhpeft.analysis.tables import markdown_table
from pyro_bhpeft.cli import main
from pyro_bhpeft.compare.methods import TFB_THRESHOLD
from pyro_bhpeft.recipe import PRESETS
from pyro_bhpeft.compare import METHODS, Method, Protocol, Scored, register_method, run_compare, summarize
from pyro_bhpeft.config import ConfigError, LoraConfig, PeftConfig
from pyro_bhpeft.data import load_files
from helpers import reviews

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import lab_methods  # noqa: E402  (the experiment-only methods, so every registered method is compared)

SEEDS = (0, 1)
SCALED = [m for m in METHODS if METHODS[m].has_scales]


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


@pytest.fixture(scope="module")
def compared(tiny_backbone, task_files, tmp_path_factory):
    """Every built-in method at seeds 0 and 1 with OOD examples, run once for the tests that only read it."""
    data, ood = task_files
    out = tmp_path_factory.mktemp("compared") / "cmp"
    run_compare(protocol(tiny_backbone), out, methods=tuple(METHODS), seeds=SEEDS, data=data, ood=ood, progress=False)
    return out


@pytest.fixture
def compared_copy(compared, tmp_path):
    """A copy of the module's comparison that a test may change."""
    return shutil.copytree(compared, tmp_path / "cmp")


def cells_csv(path):
    with open(path) as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def cell(out, method, seed):
    return json.loads((out / "cells" / f"{method}-seed{seed}" / "metrics.json").read_text())


def predictions(out, method, seed):
    with np.load(out / "cells" / f"{method}-seed{seed}" / "predictions.npz") as f:
        return {k: f[k] for k in f.files}


def md_rows(text, first_header="method"):
    """The rows of the first markdown table in ``text`` whose first header is ``first_header``, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells
    return rows


def assert_metrics_follow_from_predictions(out, method, seed):
    c, p = cell(out, method, seed), predictions(out, method, seed)
    probs, y = p["test_probs"], p["test_labels"].astype(int)
    assert c["accuracy"] == float(np.mean(probs.argmax(1) == y))
    assert c["nll"] == pytest.approx(float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()), rel=1e-5)
    assert c["mutual_information"] == pytest.approx(float(p["test_mi"].mean()), rel=1e-5, abs=1e-9)
    if "ood_entropy" in p:
        assert c["ood_auroc"] == metrics.ood_auroc(p["test_entropy"], p["ood_entropy"])
    vy = p["validation_labels"].astype(int)  # validation, what a selection among methods reads
    assert c["validation"]["accuracy"] == float(np.mean(p["validation_probs"].argmax(1) == vy))
    assert c["validation"]["nll"] == pytest.approx(metrics.nll(p["validation_probs"], vy), rel=1e-5)
    if "ood_labels" in p:  # the OOD task shares the answers: scored on its labels too
        oy = p["ood_labels"].astype(int)
        assert c["ood_accuracy"] == float(np.mean(p["ood_probs"].argmax(1) == oy))
        assert c["ood_ece"] == pytest.approx(metrics.ece(p["ood_probs"], oy), rel=1e-6)


def fit_name(recipe) -> str:
    """The fit-cache directory name, written out independently of the package (committed results use it)."""
    key = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{recipe.guide}-seed{recipe.seed}-{key}"


# ---- one run of every method ------------------------------------------------------------------------
def test_every_method_has_one_table_row_over_both_seeds(compared):
    rows = cells_csv(compared / "comparison.csv")
    assert list(rows) == list(METHODS) and all(int(r["seeds"]) == len(SEEDS) for r in rows.values())
    table = md_rows((compared / "comparison.md").read_text())
    assert list(table) == list(METHODS) and all(table[m][1] == str(len(SEEDS)) for m in METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_cells_metrics_are_those_of_its_saved_predictions(compared, method):
    for seed in SEEDS:
        assert_metrics_follow_from_predictions(compared, method, seed)
        assert cell(compared, method, seed)["predict_seconds"] > 0


def test_trainable_counts_follow_from_what_each_method_fits(compared):
    lora = cell(compared, "lora", 0)["trainable"]
    assert lora > 0
    counts = {m: cell(compared, m, 0)["trainable"] for m in METHODS}
    for same in ("map", "mc-dropout", "mc-dropout-lora", "laplace", "laplace-glm"):
        assert counts[same] == lora, same
    assert counts["ensemble"] == 2 * lora  # ensemble_size 2
    assert counts["temperature"] == lora + 1  # the temperature
    assert counts["mean-field-lora"] > lora and counts["mean-field"] > counts["mean-field-lora"]
    for laplace in ("laplace-kfac", "laplace-kfac-probit", "laplace-diag"):  # the peft LoRA's weights
        assert counts[laplace] == counts["peft-lora"] == lora, laplace


def test_laplace_lora_links_share_one_fit_and_differ_only_in_the_predictive(compared, tiny_backbone):
    train_size = protocol(tiny_backbone).train_size  # the whole training set, as the authors fit it
    for seed in SEEDS:
        mc, probit, diag = (cell(compared, m, seed) for m in ("laplace-kfac", "laplace-kfac-probit", "laplace-diag"))
        assert mc["prior_precision"] == probit["prior_precision"] > 0 and diag["prior_precision"] > 0
        assert mc["ggn_examples"] == probit["ggn_examples"] == diag["ggn_examples"] == train_size
        assert mc["mutual_information"] > 0 and probit["mutual_information"] == 0  # the probit has no draws
        assert mc["train_seconds"] == probit["train_seconds"]  # the kept fit's seconds, not a refit's
        kept = json.loads((compared / "fits" / f"peft-lora-seed{seed}" / "fit.json").read_text())
        assert cell(compared, "peft-lora", seed)["train_seconds"] == kept["seconds"]  # peft-lora reuses it too


def test_shared_fits_are_fitted_once_each_under_their_recipes_key(compared, tiny_backbone):
    p = protocol(tiny_backbone)
    hybrid = PeftConfig.hybrid()
    expected = {fit_name(p.recipe(s)) for s in (0, 1, 1000, 1001)}  # lora, temperature, laplace, ensemble
    for s in SEEDS:
        expected |= {fit_name(p.recipe(s, dropout=True)), fit_name(p.recipe(s, guide="map")),
                     fit_name(p.recipe(s, dropout=True, peft=PeftConfig(LoraConfig(lora_dropout=0.1)))),
                     fit_name(p.recipe(s, guide="mean-field", peft=hybrid)),
                     fit_name(p.recipe(s, guide="mean-field", peft=hybrid, random_blocks=2)),
                     fit_name(p.recipe(s, guide="low-rank", peft=hybrid)),
                     fit_name(p.recipe(s, guide="mean-field")), f"laplace-seed{s}",
                     fit_name(p.recipe(s, **PRESETS["blob"])), fit_name(p.recipe(s, **PRESETS["bh-peft-fs"])),
                     fit_name(p.recipe(s, **PRESETS["bayes-lora-fs"])),
                     fit_name(p.recipe(s, **PRESETS["lora-gates"])),
                     fit_name(p.recipe(s, **METHODS["lora-gates-nonoise"].base_fit)),
                     f"tfb-{TFB_THRESHOLD:g}-seed{s}", f"peft-lora-seed{s}", f"laplace-torch-kron-seed{s}",
                     f"laplace-torch-diag-seed{s}"}
    assert {f.name for f in (compared / "fits").iterdir()} == expected


def test_cells_are_saved_as_method_and_seed(compared):
    assert {c.name for c in (compared / "cells").iterdir()} == {f"{m}-seed{s}" for m in METHODS for s in SEEDS}


def test_both_laplace_predictives_share_one_laplace_fit_per_seed(compared):
    for seed in SEEDS:
        saved = json.loads((compared / "fits" / f"laplace-seed{seed}" / "laplace.json").read_text())
        sampled, glm = cell(compared, "laplace", seed), cell(compared, "laplace-glm", seed)
        assert sampled["prior_precision"] == glm["prior_precision"] == saved["prior_precision"]
        assert sampled["train_seconds"] == glm["train_seconds"]


def test_posterior_mean_methods_reuse_their_sampled_fit_and_draw_nothing(compared):
    for seed in SEEDS:
        for mean, sampled in (("blob-mean", "blob"), ("bayes-lora-fs-mean", "bayes-lora-fs")):
            at_mean, drawn = cell(compared, mean, seed), cell(compared, sampled, seed)
            assert at_mean["train_seconds"] == drawn["train_seconds"]  # the kept fit's seconds, not a refit's
            assert at_mean["mutual_information"] == 0  # one pass at the mean; the draws differ from it:
            assert not np.array_equal(predictions(compared, mean, seed)["test_probs"],
                                      predictions(compared, sampled, seed)["test_probs"])


def test_the_last_layer_laplace_method_builds_on_loras_fit_and_predicts_in_one_pass(compared):
    for seed in SEEDS:
        llla, lora = cell(compared, "lora-llla", seed), cell(compared, "lora", seed)
        assert llla["trainable"] == lora["trainable"] and llla["prior_precision"] > 0
        assert llla["train_seconds"] == pytest.approx(lora["train_seconds"] + llla["laplace_seconds"])
        assert llla["mutual_information"] > 0  # the head's variance reaches the predictive without draws
        assert not np.array_equal(predictions(compared, "lora-llla", seed)["test_probs"],
                                  predictions(compared, "lora", seed)["test_probs"])


def test_variance_in_the_top_two_of_two_blocks_is_the_whole_mean_field_hybrid(compared):
    """The tiny backbone has 2 blocks, so random_blocks=2 leaves every site random: the same fit and draws as
    mean-field (the recipes differ only in the field, so their fits are kept apart but agree)."""
    for seed in SEEDS:
        top, full = predictions(compared, "mean-field-top2", seed), predictions(compared, "mean-field", seed)
        np.testing.assert_allclose(top["test_probs"], full["test_probs"], rtol=1e-5, atol=1e-6)
        assert cell(compared, "mean-field-top2", seed)["trainable"] == cell(compared, "mean-field", seed)["trainable"]


def test_temperature_keeps_every_argmax_so_its_paired_accuracy_difference_is_zero(compared):
    for seed in SEEDS:
        lora, temp = predictions(compared, "lora", seed), predictions(compared, "temperature", seed)
        np.testing.assert_array_equal(lora["test_probs"].argmax(1), temp["test_probs"].argmax(1))
        assert cell(compared, "temperature", seed)["accuracy"] == cell(compared, "lora", seed)["accuracy"]
    sig = cells_csv(compared / "significance.csv")
    assert float(sig["temperature"]["delta_accuracy"]) == 0.0 and float(sig["temperature"]["p_accuracy_holm"]) == 1.0


def test_every_method_but_the_baseline_is_tested_against_it(compared):
    sig = cells_csv(compared / "significance.csv")
    assert list(sig) == [m for m in METHODS if m != "lora"]
    assert all(int(r["seeds"]) == len(SEEDS) for r in sig.values())
    tests = md_rows((compared / "comparison.md").read_text().split("## Paired tests")[1])
    assert list(tests) == list(sig)


def test_the_table_shows_mean_and_sd_over_the_seeds_cells(compared):
    rows, table = cells_csv(compared / "comparison.csv"), md_rows((compared / "comparison.md").read_text())
    nlls = [cell(compared, "map", s)["nll"] for s in SEEDS]
    assert nlls[0] != nlls[1]  # so the sample sd is not zero and tells n - 1 from n
    assert float(rows["map"]["nll_mean"]) == pytest.approx(statistics.fmean(nlls))
    assert float(rows["map"]["nll_sd"]) == pytest.approx(statistics.stdev(nlls))
    assert table["map"][3] == f"{statistics.fmean(nlls):.3f} ± {statistics.stdev(nlls):.3f}"
    accs = [100 * cell(compared, "map", s)["accuracy"] for s in SEEDS]
    assert float(rows["map"]["accuracy_mean"]) == pytest.approx(statistics.fmean(accs))
    assert table["ensemble"][-1] == f"{cell(compared, 'ensemble', 0)['trainable']:,}"  # params: no ± sd


def test_figures_are_the_four_plots_and_one_scale_figure_per_method_with_scales(compared):
    assert SCALED == ["laplace", "mean-field", "mean-field-top2", "low-rank", "mean-field-lora", "blob", "tfb",
                      "bh-peft-fs", "bayes-lora-fs"]
    figures = ["reliability", "accuracy-coverage", "confidence", "ood-uncertainty", "scales-mean-field",
               "scales-mean-field-top2", "scales-low-rank", "scales-mean-field-lora", "scales-blob", "scales-bh-peft-fs", "scales-bayes-lora-fs", "scales-laplace",
               "scales-tfb"]  # the committed reports' order, then the methods added since
    assert {f.stem for f in (compared / "figures").iterdir()} == set(figures)
    listed = [line for line in (compared / "comparison.md").read_text().splitlines() if line.startswith("![")]
    assert listed == [f"![figures/{f}.png](figures/{f}.png)" for f in figures]


def test_only_methods_with_scales_keep_them_with_their_cells(compared):
    for m in METHODS:
        path = compared / "cells" / f"{m}-seed0" / "scales.json"
        assert path.exists() == (m in SCALED), m
    scales = json.loads((compared / "cells" / "mean-field-seed0" / "scales.json").read_text())
    assert scales and all(row["posterior_scale"] > 0 and row["prior_scale"] == 1.0 for row in scales)


def test_scale_figures_are_redrawn_from_the_cells_once_the_fits_are_gone(compared_copy):
    out = compared_copy
    shutil.rmtree(out / "fits")
    for m in SCALED:
        (out / "figures" / f"scales-{m}.png").unlink()
    text = summarize(out, list(METHODS), SEEDS).read_text()
    for m in SCALED:
        assert f"figures/scales-{m}.png" in text and (out / "figures" / f"scales-{m}.png").stat().st_size > 1000


def test_scale_rows_come_from_the_methods_saved_posterior_when_the_cell_has_none(compared_copy):
    out = compared_copy
    for m in SCALED:
        (out / "cells" / f"{m}-seed0" / "scales.json").unlink()
        (out / "figures" / f"scales-{m}.png").unlink()
    text = summarize(out, list(METHODS), SEEDS).read_text()
    for m in SCALED:
        assert f"figures/scales-{m}.png" in text and (out / "figures" / f"scales-{m}.png").stat().st_size > 1000


# ---- resuming -----------------------------------------------------------------------------------------
def refuse(*args, **kwargs):
    raise AssertionError("something was fitted or run again")


@pytest.fixture
def refusing_methods():
    """Every registered method replaced by one whose run raises; the originals are put back afterwards."""
    originals = METHODS.items()
    for name, method in originals:
        METHODS.register(name, dataclasses.replace(method, run=refuse), replace=True)
    yield dict(originals)
    for name, method in originals:
        METHODS.register(name, method, replace=True)
    assert METHODS.items() == originals


def test_resuming_a_finished_comparison_runs_no_method(compared_copy, tiny_backbone, task_files, refusing_methods):
    data, ood = task_files
    out = compared_copy
    before = {p: p.read_bytes() for p in (out / "cells").rglob("*") if p.is_file()}
    report = (out / "comparison.md").read_text()
    run_compare(protocol(tiny_backbone), out, seeds=SEEDS, data=data, ood=ood, progress=False)
    assert before == {p: p.read_bytes() for p in (out / "cells").rglob("*") if p.is_file()}
    assert (out / "comparison.md").read_text() == report


def test_a_missing_cell_is_rerun_from_the_saved_shared_fits(compared_copy, tiny_backbone, task_files,
                                                            refusing_methods, monkeypatch):
    data, ood = task_files
    out = compared_copy
    again = ("temperature", "laplace-glm")
    old = {m: cell(out, m, 1) for m in again}
    for m in again:
        shutil.rmtree(out / "cells" / f"{m}-seed1")
        METHODS.register(m, refusing_methods[m], replace=True)
    monkeypatch.setattr(pyro_bhpeft.recipe, "train", refuse)
    monkeypatch.setattr(pyro_bhpeft.baselines, "laplace_posterior", refuse)
    run_compare(protocol(tiny_backbone), out, seeds=SEEDS, data=data, ood=ood, progress=False)
    for m in again:
        new = cell(out, m, 1)
        assert new["accuracy"] == old[m]["accuracy"] and new["nll"] == pytest.approx(old[m]["nll"], rel=1e-6)
    assert cell(out, "temperature", 1)["temperature"] == pytest.approx(old["temperature"]["temperature"], rel=1e-6)
    assert cell(out, "laplace-glm", 1)["prior_precision"] == old["laplace-glm"]["prior_precision"]


# ---- OOD: a shift of the same answers, or other answers ----------------------------------------------------
def test_an_ood_task_with_the_test_tasks_answers_is_scored_on_its_labels(compared):
    for m in METHODS:
        assert {"ood_accuracy", "ood_nll", "ood_ece"} <= set(cell(compared, m, 0))
    header = next(line for line in (compared / "comparison.md").read_text().splitlines() if line.startswith("| method"))
    assert "| OOD AUROC | OOD acc % | OOD NLL | OOD ECE % | train s |" in header
    assert "OOD acc / NLL / ECE: on the OOD task's own labels" in (compared / "comparison.md").read_text()
    assert "ood_ece_mean" in next(iter(cells_csv(compared / "comparison.csv").values()))


def test_an_ood_task_with_other_answers_gets_only_its_detection_auroc(tiny_backbone, task_files, tmp_path):
    data, _ = task_files
    other = pd.DataFrame({"review": [f"the weather was {w} cold" for w in ("very", "not", "a") * 4],
                          "sky": ["grey", "blue"] * 6})
    other.to_csv(tmp_path / "ood.csv", index=False)
    ood = load_files(tmp_path / "ood.csv", eval_files={"validation": tmp_path / "ood.csv", "test": tmp_path / "ood.csv"},
                     text_column="review", label_column="sky")
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone), out, methods=("lora",), seeds=(0,), data=data, ood=ood, progress=False)
    c, p = cell(out, "lora", 0), predictions(out, "lora", 0)
    assert "ood_auroc" in c and "ood_accuracy" not in c and "ood_labels" not in p
    assert "OOD acc %" not in (out / "comparison.md").read_text()
    assert "OOD acc / NLL / ECE" not in (out / "comparison.md").read_text()


def test_same_answers_compares_kind_class_names_and_choices():
    from pyro_bhpeft.compare.bench import same_answers
    from pyro_bhpeft.data import TaskSpec

    ids = (330, 389, 340, 422)
    letters = TaskSpec("openbookqa", "answer_choice", label_names=(" A", " B", " C", " D"), num_choices=4, answer_ids=ids)
    assert same_answers(letters, TaskSpec("arc-easy", "answer_choice", label_names=letters.label_names, num_choices=4,
                                          answer_ids=ids))
    assert not same_answers(letters, TaskSpec("piqa", "answer_choice", label_names=(" A", " B"), num_choices=2,
                                              answer_ids=ids[:2]))
    assert not same_answers(TaskSpec("a", "classification", label_names=("neg", "pos")),
                            TaskSpec("b", "classification", label_names=("grey", "blue")))


# ---- a method from outside the package ------------------------------------------------------------------
def _uniform(bench, seed: int) -> Scored:
    """Every class equally likely: accuracy is the share of label 0 (argmax of a tie), NLL is log C."""
    from pyro_bhpeft.predict import class_prediction

    classes = len(bench.spec.label_names)

    def predict(loader):
        labels = torch.cat([labels for _, labels in loader])
        return class_prediction(torch.full((1, len(labels), classes), 1.0 / classes), labels)

    return Scored(bench.predict_all(predict), train_seconds=0.0, peak_mb=0.0, trainable=0)


def test_a_method_registered_outside_the_package_runs_to_a_table_row(tiny_backbone, task_files, tmp_path):
    data, ood = task_files
    out = tmp_path / "cmp"
    register_method("uniform", Method("every class equally likely", _uniform, point_mass=True))
    try:
        assert "uniform" in METHODS
        run_compare(protocol(tiny_backbone), out, methods=("lora", "uniform"), seeds=(0,), data=data, ood=ood,
                    progress=False)
    finally:
        METHODS.unregister("uniform")
    assert "uniform" not in METHODS
    labels = predictions(out, "uniform", 0)["test_labels"]
    row = cells_csv(out / "comparison.csv")["uniform"]
    assert float(row["accuracy_mean"]) == pytest.approx(100 * np.mean(labels == 0))
    assert float(row["nll_mean"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(row["ood_auroc_mean"]) == 0.5  # every entropy tied
    ood_labels = predictions(out, "uniform", 0)["ood_labels"]  # the weather reviews share neg/pos: a shift
    assert float(row["ood_accuracy_mean"]) == pytest.approx(100 * np.mean(ood_labels == 0))
    assert float(row["ood_nll_mean"]) == pytest.approx(math.log(2), rel=1e-6)
    text = (out / "comparison.md").read_text()
    assert md_rows(text)["uniform"][:3] == ["uniform", "1", f"{100 * np.mean(labels == 0):.2f}"]  # 1 seed: no spread
    assert "- `uniform`: every class equally likely" in text
    assert list(cells_csv(out / "significance.csv")) == ["uniform"]


def test_a_diverged_method_is_refused_in_one_line_and_leaves_no_cell(tiny_backbone, task_files, tmp_path):
    from pyro_bhpeft.predict import class_prediction

    def diverged(bench, seed: int) -> Scored:  # NaN probabilities on one example of each split, as a fit gone to NaN
        def predict(loader):
            labels = torch.cat([labels for _, labels in loader])
            probs = torch.full((1, len(labels), 2), 0.5)
            probs[0, 1] = float("nan")
            return class_prediction(probs, labels)

        return Scored(bench.predict_all(predict), train_seconds=0.0, peak_mb=0.0, trainable=0)

    register_method("diverged", Method("a fit that diverged", diverged, point_mass=True))
    try:
        with pytest.raises(ConfigError, match="diverged at seed 0 predicted non-finite probabilities for 1 of 24 test"):
            run_compare(protocol(tiny_backbone), tmp_path / "cmp", methods=("diverged",), seeds=(0,),
                        data=task_files[0], progress=False)
    finally:
        METHODS.unregister("diverged")
    assert not (tmp_path / "cmp" / "cells" / "diverged-seed0").exists()


def test_method_records_are_checked_when_made_and_registered():
    with pytest.raises(ConfigError, match="has_scales needs"):
        Method("scales from nowhere", _uniform, has_scales=True)
    with pytest.raises(ConfigError, match="post-hoc"):
        Method("post-hoc on nothing", _uniform, post_hoc="laplace")
    with pytest.raises(ConfigError, match="already registered"):
        register_method("lora", Method("another lora", _uniform))
    with pytest.raises(ConfigError, match="Method record"):
        register_method("plain-function", _uniform)
    assert "plain-function" not in METHODS and METHODS["lora"].description.startswith("deterministic LoRA")


def test_markdown_table_writes_a_header_a_rule_and_one_line_per_row():
    assert markdown_table(["method", "seeds"], [["lora", 3], ["map", 2]]) == (
        "| method | seeds |\n|---|---|\n| lora | 3 |\n| map | 2 |")
    assert markdown_table(["a"], []) == "| a |\n|---|"
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [[1, 2], [3]])


# ---- other protocols and data -----------------------------------------------------------------------------
def test_a_one_member_ensemble_is_deterministic_lora(tiny_backbone, task_files, tmp_path):
    data, _ = task_files
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone, ensemble_size=1), out, methods=("lora", "ensemble"), seeds=(0,), data=data,
                progress=False)
    np.testing.assert_allclose(predictions(out, "ensemble", 0)["test_probs"], predictions(out, "lora", 0)["test_probs"])


@pytest.mark.parametrize("method", ["peft-lora", "ivon"])
def test_the_peft_peers_train_under_the_protocols_learning_rate_schedule(method, tiny_backbone, task_files, tmp_path,
                                                                         monkeypatch):
    # the peers get the warm-up and decay every other method gets (the causal-LM protocol has both)
    seen = []
    train = pyro_bhpeft.baselines.train_peft_lora

    def recording(*args, **kwargs):
        seen.append((kwargs.get("warmup_ratio"), kwargs.get("lr_decay")))
        return train(*args, **kwargs)

    monkeypatch.setattr(pyro_bhpeft.baselines, "train_peft_lora", recording)
    data, _ = task_files
    run_compare(protocol(tiny_backbone, warmup_ratio=0.25, lr_decay="linear"), tmp_path / "cmp", methods=(method,),
                seeds=(0,), data=data, progress=False)
    assert seen == [(0.25, "linear")]


def test_ivon_runs_with_its_authors_settings_for_the_task(tiny_backbone, task_files, tmp_path, monkeypatch):
    # IVON-LoRA's public scripts: ess far above the data size, per task, and no learning-rate rescaling
    from pyro_bhpeft.baselines import IVON_SETTINGS, ivon_task_settings

    assert ivon_task_settings("winogrande-s") == {"ess": 1e7, "hess_init": 3e-4}
    assert ivon_task_settings("arc-easy") == {"ess": 1e6, "hess_init": 1e-3}
    assert ivon_task_settings("reviews") == {"ess": 1e7, "hess_init": 3e-4}  # a task they did not run: their defaults
    assert IVON_SETTINGS["rescale_lr"] is False and IVON_SETTINGS["weight_decay"] == 0
    built = []
    make = pyro_bhpeft.baselines.ivon_optimizer

    def recording(*args, **kwargs):
        built.append(make(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(pyro_bhpeft.baselines, "ivon_optimizer", recording)
    data, _ = task_files
    run_compare(protocol(tiny_backbone), tmp_path / "cmp", methods=("ivon",), seeds=(0,), data=data, progress=False)
    (group,) = built[0].param_groups
    assert (group["ess"], group["lr"], group["clip_radius"], built[0].rescale_lr) == (1e7, 0.03, 1e-3, False)
    assert float(group["hess"].max()) > 0 and group["weight_decay"] == 0
    # the earlier setting, kept under its own name for the cells it produced: ess = the training-set size
    run_compare(protocol(tiny_backbone), tmp_path / "cmp", methods=("ivon-ess-n",), seeds=(0,), data=data,
                progress=False)
    (group,) = built[1].param_groups
    assert (group["ess"], group["weight_decay"], built[1].rescale_lr) == (protocol(tiny_backbone).train_size, 1e-4, True)


def test_another_protocol_in_the_same_directory_is_refused_unless_overwrite(tiny_backbone, task_files, tmp_path):
    data, _ = task_files
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone), out, methods=("lora",), seeds=(0,), data=data, progress=False)
    with pytest.raises(FileExistsError, match="different protocol"):
        run_compare(protocol(tiny_backbone, epochs=2), out, methods=("lora",), seeds=(0,), data=data, progress=False)
    run_compare(protocol(tiny_backbone, epochs=2), out, methods=("lora",), seeds=(0,), data=data, progress=False,
                overwrite=True)
    assert json.loads((out / "protocol.json").read_text())["epochs"] == 2
    assert Protocol.read(out) == protocol(tiny_backbone, epochs=2)  # the saved protocol reads back as run
    assert Protocol.read(out, epochs=3) == protocol(tiny_backbone, epochs=3)  # with changes
    with pytest.raises(ConfigError, match="no protocol.json"):
        Protocol.read(tmp_path)


def test_every_committed_comparison_reads_back_its_protocol():
    # the benchmarks and the summary rebuild protocols from these files: each must still load and round-trip
    from pathlib import Path

    folders = sorted(p.parent for p in (Path(__file__).parents[1] / "docs" / "compare").glob("*/protocol.json"))
    assert len(folders) >= 10
    for folder in folders:
        saved = json.loads((folder / "protocol.json").read_text())
        assert Protocol.read(folder).to_dict() == saved, folder


def test_bad_methods_and_tasks_are_clear_errors(tiny_backbone, task_files, tmp_path, capsys):
    data, _ = task_files
    with pytest.raises(ConfigError, match="unknown comparison method 'dropout'; choose from lora, map"):
        run_compare(protocol(tiny_backbone), tmp_path / "x", methods=("lora", "dropout"), data=data, progress=False)
    assert main(["compare", "--task", "reviews", "--methods", "lora,nope", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown comparison method 'nope'" in err[0]
    assert main(["compare", "--task", "no-such-task", "--out", str(tmp_path / "z")]) == 2
    assert "no-such-task" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    for bad in ({"max_steps": 0}, {"train_size": 0}, {"samples": 2.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            protocol(tiny_backbone, **bad)


def test_a_method_whose_library_is_missing_is_refused_before_any_cell_runs(tiny_backbone, task_files, tmp_path,
                                                                          capsys):
    data, _ = task_files
    register_method("needs-missing", Method("a peer from a library not installed", _uniform,
                                            requires=(("no_such_module_xyz",), "pip install xyz")))
    try:
        with pytest.raises(ConfigError, match="'needs-missing' needs no_such_module_xyz, which is not installed: "
                                              "pip install xyz"):
            run_compare(protocol(tiny_backbone), tmp_path / "x", methods=("lora", "needs-missing"), data=data,
                        progress=False)
        assert not (tmp_path / "x").exists()  # refused before the lora cell
        assert main(["compare", "--task", "reviews", "--methods", "needs-missing", "--out", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install xyz" in err[0]
    finally:
        METHODS.unregister("needs-missing")
    METHODS["laplace-kfac"].check_installed("laplace-kfac")  # installed here, as the README's set-up does


@pytest.mark.slow
def test_compare_on_the_real_packaged_model_and_task(tmp_path):
    out = tmp_path / "cmp"
    code = main(["compare", "--task", "sentiment", "--methods", "lora,laplace,mean-field", "--seeds", "1",
                 "--max-steps", "2", "--train-size", "48", "--eval-size", "24", "--laplace-examples", "4",
                 "--out", str(out)])
    assert code == 0
    rows = cells_csv(out / "comparison.csv")
    assert list(rows) == ["lora", "laplace", "mean-field"]
    saved = json.loads((out / "fits" / "laplace-seed0" / "laplace.json").read_text())
    assert cell(out, "laplace", 0)["prior_precision"] == saved["prior_precision"]
    for m in rows:
        assert "ood_entropy" in predictions(out, m, 0)  # OOD: the r8 news task
        assert_metrics_follow_from_predictions(out, m, 0)
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
    run_compare(protocol(tiny_backbone, eval_size=18), out, methods=tuple(METHODS), seeds=(0,), data=data,
                progress=False)
    rows = cells_csv(out / "comparison.csv")
    assert list(rows) == list(METHODS)
    for m in METHODS:
        p = predictions(out, m, 0)
        assert p["test_probs"].shape == (18, 3)
        np.testing.assert_allclose(p["test_probs"].sum(1), 1.0, atol=1e-5)
        accuracy = 100 * np.mean(p["test_probs"].argmax(1) == p["test_labels"])
        assert float(rows[m]["accuracy_mean"]) == pytest.approx(accuracy)
        assert_metrics_follow_from_predictions(out, m, 0)


def test_adding_a_method_to_a_comparison_keeps_the_other_methods_rows(tiny_backbone, task_files, tmp_path):
    data, _ = task_files
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone), out, methods=("lora",), seeds=(0,), data=data, progress=False)
    run_compare(protocol(tiny_backbone), out, methods=("map",), seeds=(0,), data=data, progress=False)
    assert list(cells_csv(out / "comparison.csv")) == ["lora", "map"]


def test_running_one_missing_seed_keeps_the_other_seeds_in_the_summary(tiny_backbone, task_files, tmp_path):
    data, _ = task_files
    out = tmp_path / "cmp"
    run_compare(protocol(tiny_backbone), out, methods=("lora",), seeds=(0, 1), data=data, progress=False)
    run_compare(protocol(tiny_backbone), out, methods=("map",), seeds=(1,), data=data, progress=False)
    rows = cells_csv(out / "comparison.csv")
    assert rows["lora"]["seeds"] == "2" and rows["map"]["seeds"] == "1"
    assert "Seeds 0, 1;" in (out / "comparison.md").read_text()


def test_how_a_fit_predicts_is_not_part_of_its_key():
    """bayes-lora-fs and bayes-lora-fs-mean are one fit: the recipe's predict_samples does not enter fit_dir."""
    from pathlib import Path

    from pyro_bhpeft.compare.bench import fit_dir
    from pyro_bhpeft.recipe import PRESETS, Recipe

    sampled = Recipe().with_(**PRESETS["bayes-lora-fs"])
    assert fit_dir(Path("c"), sampled) == fit_dir(Path("c"), Recipe().with_(**PRESETS["bayes-lora-fs-mean"]))
    assert fit_dir(Path("c"), sampled) != fit_dir(Path("c"), sampled.with_(seed=1))
    assert fit_dir(Path("c"), sampled) != fit_dir(Path("c"), sampled.with_(flipout=False))


def test_temperature_scales_the_validation_predictions_it_fitted_on_without_predicting_them_again(
        compared_copy, tiny_backbone, task_files, monkeypatch):
    import importlib

    module = importlib.import_module("pyro_bhpeft.predict")  # the package exports the function under this name
    data, ood = task_files
    out = compared_copy
    old = predictions(out, "temperature", 1)
    shutil.rmtree(out / "cells" / "temperature-seed1")
    calls, real = [], module.predict
    monkeypatch.setattr(module, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_compare(protocol(tiny_backbone), out, methods=("temperature",), seeds=(1,), data=data, ood=ood,
                progress=False)
    splits = [k for k in old if k.endswith("_probs")]
    assert len(splits) == 3 and len(calls) == 3  # validation, test and OOD each predicted once
    new = predictions(out, "temperature", 1)
    for key in splits:
        np.testing.assert_array_equal(new[key], old[key])
