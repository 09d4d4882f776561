"""The command line as a new user meets it: what was held out and what evaluate scores, flags that are capped or
ignored, paths that work from anywhere, checks made before training, runs saved from Python, and files nobody
tuned the tool on (unlabelled texts, unseen classes, a real-valued target, a TSV)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import namedtuple

import numpy as np
import pandas as pd
import pytest

import pyro_bhpeft.recipe
from helpers import error_line, fit_args, reviews
from pyro_bhpeft.cli import main


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture()
def train(tmp_path):
    path = tmp_path / "train.csv"
    reviews(60).to_csv(path, index=False)
    return path


@pytest.fixture()
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained before the check")

    monkeypatch.setattr(pyro_bhpeft.recipe, "train", refuse)


def test_the_eval_file_is_what_evaluate_scores_and_the_fit_says_what_it_held_out(tiny_backbone, train, tmp_path,
                                                                                 capsys):
    test, run = tmp_path / "test.csv", tmp_path / "run"
    reviews(20, seed=3).to_csv(test, index=False)
    assert run_cli(*fit_args(tiny_backbone, train, run, "--eval", test)) == 0
    err = capsys.readouterr().err
    assert "validation 6 rows (10 %)" in err and "`evaluate RUN` will score test: test.csv (20 rows)" in err
    assert run_cli("evaluate", run, "--samples", 2) == 0
    assert json.loads((run / "metrics-test.json").read_text())["samples"]["n"] == 20
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "carved")) == 0
    err = capsys.readouterr().err
    assert "`evaluate RUN` will score test: 10 % of train.csv (6 rows" in err and "--eval FILE" in err


def test_unseen_classes_in_the_eval_file_are_one_line_or_dropped(tiny_backbone, train, tmp_path, capsys):
    test = tmp_path / "test.csv"
    frame = reviews(10, seed=3)
    frame.loc[:2, "sentiment"] = "meh"
    frame.to_csv(test, index=False)
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "run", "--eval", test)) == 2
    line = error_line(capsys)
    assert "'meh'" in line and "--drop-unseen" in line and not (tmp_path / "run").exists()
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "run", "--eval", test, "--drop-unseen")) == 0
    assert run_cli("evaluate", tmp_path / "run", "--samples", 2) == 0
    assert json.loads((tmp_path / "run" / "metrics-test.json").read_text())["samples"]["n"] == 7


def test_capped_and_ignored_flags_say_so_in_one_line(tiny_backbone, train, tmp_path, capsys):
    run = tmp_path / "run"
    args = fit_args(tiny_backbone, train, run, "--epochs", 1, "--max-examples", 10, "--checkpoint-every", 50)
    args[args.index("--max-steps") + 1] = 60
    assert run_cli(*args) == 0
    err = capsys.readouterr().err
    assert "--max-steps 60 is capped at 6 steps: 1 epoch(s) of 6 batches of 48 rows" in err
    assert "--max-examples applies to a --task only; ignored" in err
    assert "--checkpoint-every 50 is never reached in 6 steps" in err
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 6


def test_relative_paths_are_stored_absolute_and_work_from_anywhere(tiny_backbone, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny_backbone, work / "bb")
    reviews(60).to_csv(work / "train.csv", index=False)
    reviews(12, seed=2).to_csv(work / "test.csv", index=False)
    monkeypatch.chdir(work)
    assert run_cli(*fit_args("bb", "train.csv", "run", "--eval", "test.csv")) == 0
    meta = json.loads((work / "run" / "config.json").read_text())
    assert meta["backbone"] == str(work / "bb")
    assert meta["meta"]["source"]["eval_files"]["test"] == str(work / "test.csv")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run_cli("evaluate", work / "run", "--samples", 2) == 0


def test_update_reuses_the_parents_columns(tiny_backbone, train, tmp_path):
    parent, new = tmp_path / "round1", tmp_path / "new.csv"
    assert run_cli(*fit_args(tiny_backbone, train, parent)) == 0
    reviews(40, seed=5).to_csv(new, index=False)  # columns review / sentiment, as the parent's
    assert run_cli("update", "--from", parent, "--train", new, "--max-steps", 1, "--out", tmp_path / "round2") == 0
    source = json.loads((tmp_path / "round2" / "config.json").read_text())["meta"]["source"]
    assert source["columns"]["text_column"] == "review" and source["columns"]["label_column"] == "sentiment"


def test_an_existing_checkpoint_is_resumed_only_when_asked(tiny_backbone, train, tmp_path, capsys):
    from pyro_bhpeft.checkpoint import save_state

    checkpoint = tmp_path / "run.checkpoint.safetensors"
    save_state(checkpoint, {"identity": None, "step": 1})
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "run")) == 2
    line = error_line(capsys)
    assert "--resume" in line and "delete" in line and checkpoint.is_file()
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "run", "--overwrite")) == 0
    assert not checkpoint.exists()


def test_the_output_location_is_checked_before_training(tiny_backbone, train, tmp_path, capsys, monkeypatch,
                                                        no_training):
    import pyro_bhpeft.cli_checks

    (tmp_path / "afile").write_text("x")
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "afile" / "run")) == 2
    assert "not a directory" in error_line(capsys)
    assert run_cli(*fit_args(tiny_backbone, train, "")) == 2
    assert "--out is empty" in error_line(capsys)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pyro_bhpeft.cli_checks.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 2**20))
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "run")) == 2
    assert "only 1 MB free" in error_line(capsys)


def test_max_length_beyond_the_models_positions_is_one_line(tiny_backbone, train, tmp_path, capsys, no_training):
    args = fit_args(tiny_backbone, train, tmp_path / "run")
    args[args.index("--max-length") + 1] = 1024
    assert run_cli(*args) == 2
    assert "--max-length 1024 is more than the 64 positions" in error_line(capsys)


def test_a_second_fit_to_a_locked_output_fails_at_once_and_a_stale_lock_is_taken_over(tiny_backbone, train, tmp_path,
                                                                                      capsys, monkeypatch):
    lock, run = tmp_path / "run.lock", tmp_path / "run"
    lock.write_text(f"{os.getppid()}\n")  # a live process holds it
    with monkeypatch.context() as patch:
        patch.setattr(pyro_bhpeft.recipe, "train", lambda *a, **k: pytest.fail("trained under another's lock"))
        assert run_cli(*fit_args(tiny_backbone, train, run)) == 2
    assert f"process {os.getppid()}" in error_line(capsys) and not run.exists()
    child = subprocess.Popen(["true"])
    child.wait()
    lock.write_text(f"{child.pid}\n")  # its process has ended
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    assert run.is_dir() and not lock.exists()
    other = tmp_path / "notes.lock"
    other.write_text("my notes, not a lock")
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "notes")) == 2
    assert "not a lock" in error_line(capsys) and other.read_text() == "my notes, not a lock"


def test_a_run_saved_from_python_loads_in_the_cli(tiny_backbone, train, tmp_path, capsys):
    from pyro_bhpeft import Posterior
    from pyro_bhpeft.data import load_files
    from pyro_bhpeft.recipe import Recipe, train as train_recipe

    data = load_files(train, text_column="review", label_column="sentiment")
    result = train_recipe(Recipe(backbone=tiny_backbone, max_steps=1, batch_size=8, max_length=16), data,
                          progress=False)
    run = tmp_path / "api-run"
    Posterior(result.posterior.model, result.posterior.guide).save(run)  # no backbone name, no meta
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == tiny_backbone and config["task"] == "classification"
    new = tmp_path / "new.csv"
    frame = reviews(6, seed=4).rename(columns={"review": "text", "sentiment": "label"})
    frame["label"] = (frame["label"] == "pos").astype(int)  # the run knows no class names: ids
    frame.to_csv(new, index=False)
    assert run_cli("evaluate", run, "--data", new, "--samples", 2, "--out", tmp_path / "m.json") == 0
    capsys.readouterr()
    assert run_cli("evaluate", run) == 2
    assert "does not record the data" in error_line(capsys)
    assert run_cli("update", "--from", run, "--train", train, "--text-column", "review", "--label-column", "sentiment",
                   "--max-steps", 1, "--out", tmp_path / "round2") == 0


# ---- files nobody tuned the tool on ------------------------------------------------------------------------------
def test_predict_works_on_text_alone_and_reports_unseen_labels(tiny_backbone, train, tmp_path, capsys):
    run, texts, odd = tmp_path / "run", tmp_path / "texts.csv", tmp_path / "odd.csv"
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    reviews(5, seed=6)[["review"]].to_csv(texts, index=False)
    assert run_cli("predict", run, "--data", texts, "--samples", 2, "--out", tmp_path / "p.csv") == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 5 and list(table["text"]) == list(reviews(5, seed=6)["review"])
    frame = reviews(6, seed=7)
    frame.loc[:1, "sentiment"] = "meh"
    frame.to_csv(odd, index=False)
    capsys.readouterr()
    assert run_cli("predict", run, "--data", odd, "--samples", 2, "--out", tmp_path / "q.csv") == 0
    assert "meh" in capsys.readouterr().err and len(pd.read_csv(tmp_path / "q.csv")) == 6
    assert run_cli("evaluate", run, "--data", odd, "--samples", 2) == 2
    line = error_line(capsys)
    assert "'meh'" in line and "2 rows" in line and "--drop-unseen" in line
    assert run_cli("evaluate", run, "--data", odd, "--samples", 2, "--drop-unseen", "--out", tmp_path / "m.json") == 0
    assert json.loads((tmp_path / "m.json").read_text())["samples"]["n"] == 4


def test_a_real_valued_target_and_a_tsv_work_without_flags(tiny_backbone, tmp_path, capsys):
    rng = np.random.default_rng(0)
    frame = reviews(60)
    frame["score"] = rng.normal(3.0, 1.0, len(frame)).round(3)
    table = tmp_path / "scores.tsv"
    frame[["review", "score"]].to_csv(table, sep="\t", index=False)
    run = tmp_path / "run"
    assert run_cli("fit", "--train", table, "--text-column", "review", "--label-column", "score", "--backbone",
                   tiny_backbone, "--max-steps", 2, "--batch-size", 8, "--max-length", 16, "--out", run) == 0
    err = capsys.readouterr().err
    assert "regression" in err and "recipe bh-peft-low-rank" in err  # the kind's default, and a line saying so
    meta = json.loads((run / "config.json").read_text())["meta"]
    assert meta["kind"] == "regression" and meta["recipe"]["guide"] == "low-rank"
    child = tmp_path / "round2"  # the default serves rounds: its low-rank posterior becomes the next prior
    assert run_cli("update", "--from", run, "--train", table, "--max-steps", 2, "--out", child) == 0
    child_meta = json.loads((child / "config.json").read_text())["meta"]
    assert child_meta["round"] == 2 and child_meta["recipe"]["guide"] == "low-rank"
    assert run_cli("evaluate", run, "--samples", 2) == 0
    assert "mse" in json.loads((run / "metrics-test.json").read_text())["samples"]
    texts = tmp_path / "texts.tsv"
    frame[["review"]].head(4).to_csv(texts, sep="\t", index=False)
    assert run_cli("predict", run, "--data", texts, "--samples", 2, "--out", tmp_path / "p.csv") == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 4 and "mean" in table and "label" not in table


def test_file_flags_given_with_a_task_are_said_to_be_ignored(tiny_backbone, train, tmp_path, capsys, monkeypatch):
    import pyro_bhpeft.data
    from pyro_bhpeft.data import load_files

    data = load_files(train, text_column="review", label_column="sentiment")
    monkeypatch.setattr(pyro_bhpeft.data, "load_task", lambda *a, **k: data)
    assert run_cli("fit", "--task", "reviews", "--kind", "regression", "--text-column", "body", "--backbone",
                   tiny_backbone, "--max-steps", 1, "--batch-size", 8, "--max-length", 16,
                   "--out", tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert "--kind applies to --train files only; ignored for --task reviews" in err
    assert "--text-column applies to --train files only" in err


def test_a_disk_that_fills_during_the_save_is_one_line_and_keeps_nothing_half_written(tiny_backbone, train, tmp_path,
                                                                                      capsys, monkeypatch):
    import errno

    import pyro_bhpeft.posterior

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run"))

    monkeypatch.setattr(pyro_bhpeft.posterior, "save_file", full)
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "run")) == 2
    assert "No space left on device" in error_line(capsys)
    assert not (tmp_path / "run").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
