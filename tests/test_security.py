"""Someone else's run or comparison folder runs no code and reads nothing outside itself, and nothing a user owns
is ever deleted: planted pickles, a folder of the user's under --overwrite, configs naming files, the hub or
impossible sizes, all through the command line."""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from helpers import error_line, fit_args, reviews
from pyro_bhpeft.cli import main


class Payload:
    """A pickle that, when loaded, writes ``marker``: what an attacker plants."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def plant(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "identity": None, "payload": Payload(marker)}, path)


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture()
def train(tmp_path):
    path = tmp_path / "train.csv"
    reviews(48).to_csv(path, index=False)
    return path


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# ---- planted pickles ------------------------------------------------------------------------------------------
def test_fit_resume_runs_no_planted_checkpoint(tiny_backbone, train, tmp_path, capsys):
    marker, run = tmp_path / "pwned", tmp_path / "run"
    for name in ("run.checkpoint.safetensors", "run.checkpoint.pt"):  # today's name, and older versions'
        plant(tmp_path / name, marker)
    assert run_cli(*fit_args(tiny_backbone, train, run, "--resume")) == 2
    assert not marker.exists() and "not a safetensors file" in error_line(capsys)
    (tmp_path / "run.checkpoint.safetensors").unlink()
    assert run_cli(*fit_args(tiny_backbone, train, run, "--resume")) == 2
    assert "older version" in error_line(capsys) and not marker.exists() and not run.exists()


def test_a_checkpoint_of_another_recipe_is_refused_from_its_header_before_any_tensor(tiny_backbone, train, tmp_path,
                                                                                     capsys, monkeypatch):
    import safetensors.torch

    from pyro_bhpeft.checkpoint import save_state

    save_state(tmp_path / "run.checkpoint.safetensors", {"identity": {"recipe": "someone else's"},
                                                         "guide": {"w": torch.zeros(3)}})

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read before the identity was checked")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    assert run_cli(*fit_args(tiny_backbone, train, tmp_path / "run", "--resume")) == 2
    assert "another recipe" in error_line(capsys)


def test_compare_out_runs_no_planted_fit_checkpoint_or_kept_laplace_state(tiny_backbone, tmp_path, capsys,
                                                                           monkeypatch):
    import pyro_bhpeft.data
    from pyro_bhpeft.data import load_files

    pytest.importorskip("laplace")
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    reviews(48).to_csv(train, index=False)
    reviews(16, seed=1).to_csv(test, index=False)
    data = load_files(train, eval_files={"validation": test, "test": test}, text_column="review",
                      label_column="sentiment")
    monkeypatch.setattr(pyro_bhpeft.data, "load_task", lambda *a, **k: data)
    out, marker = tmp_path / "cmp", tmp_path / "pwned"
    args = ["compare", "--task", "reviews", "--seeds", 1, "--out", out, "--backbone", tiny_backbone, "--train-size", 48,
            "--eval-size", 16, "--epochs", 1, "--max-steps", 2, "--batch-size", 8, "--max-length", 12, "--samples", 2,
            "--laplace-examples", 4, "--ood", "none"]
    assert run_cli(*args, "--methods", "lora") == 0
    fit = next(p for p in (out / "fits").iterdir() if p.is_dir())
    shutil.rmtree(fit)
    shutil.rmtree(out / "cells")
    for name in (f"{fit.name}.checkpoint.safetensors", f"{fit.name}.checkpoint.pt"):
        plant(out / "fits" / name, marker)
    code = run_cli(*args, "--methods", "lora")  # the interrupted-looking fit starts again, safely
    assert not marker.exists() and code == 0 and (fit / "fit.json").is_file()
    kept = out / "fits" / "laplace-torch-kron-seed0"
    kept.mkdir()
    (kept / "laplace.json").write_text(json.dumps({"structure": "kron", "prior_precision": 1.0, "examples": 4,
                                                    "seconds": 1.0}))
    (kept / "peak.json").write_text(json.dumps({"peak_mb": 1.0}))
    plant(kept / "state.pt", marker)
    capsys.readouterr()
    assert run_cli(*args, "--methods", "laplace-kfac") == 2
    assert "state.pt is not read" in error_line(capsys) and not marker.exists()
    peft_fit = out / "fits" / "peft-lora-seed0"  # the peft LoRA those peers share: an older version's pickle
    shutil.rmtree(peft_fit, ignore_errors=True)
    peft_fit.mkdir()
    (peft_fit / "fit.json").write_text(json.dumps({"seconds": 1.0, "peak_mb": 1.0, "trainable": 1}))
    plant(peft_fit / "trainable.pt", marker)
    assert run_cli(*args, "--methods", "peft-lora") == 0  # never read: the fit is made again, as safetensors
    assert not marker.exists() and (peft_fit / "trainable.safetensors").is_file()
    assert not (peft_fit / "trainable.pt").exists()


# ---- nothing a user owns is deleted ----------------------------------------------------------------------------
def test_overwrite_never_replaces_a_users_folder(tiny_backbone, train, tmp_path, capsys):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years of work")
    for argv in (fit_args(tiny_backbone, train, mine, "--overwrite"),
                 ["update", "--from", mine, "--train", train, "--out", mine, "--overwrite"],
                 ["compare", "--out", mine, "--overwrite"]):
        assert run_cli(*argv) == 2
        assert str(mine) in error_line(capsys)
        assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
        assert (mine / "thesis.txt").read_text() == "four years of work"
    run = tmp_path / "run"
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    assert run_cli(*fit_args(tiny_backbone, train, run, "--overwrite", "--seed", 1)) == 0  # a run of ours is replaced


def test_leftovers_of_killed_saves_are_cleaned_and_a_half_swapped_run_is_put_back(tiny_backbone, train, tmp_path,
                                                                                  capsys):
    run = tmp_path / "run"
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    saved = (run / "guide.safetensors").read_bytes()
    pid = dead_pid()
    run.rename(tmp_path / f".run.old-{pid}")  # killed between the two renames of a save
    (tmp_path / f".run.tmp-{pid}-x1y2").mkdir()  # killed while writing
    (tmp_path / f".run.checkpoint.safetensors.tmp-{pid}-ab").write_bytes(b"half")
    alive = tmp_path / f".run.tmp-{shutil.os.getppid()}-zz"  # a save still running elsewhere: left alone
    alive.mkdir()
    capsys.readouterr()
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 2
    assert "already holds a run" in error_line(capsys)
    assert (run / "guide.safetensors").read_bytes() == saved
    left = {p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")}
    assert left == {alive.name, f".run.checkpoint.safetensors.tmp-{pid}-ab"}  # the checkpoint's: at its next write
    assert run_cli(*fit_args(tiny_backbone, train, run, "--overwrite", "--checkpoint-every", 1)) == 0
    assert not (tmp_path / f".run.checkpoint.safetensors.tmp-{pid}-ab").exists()  # cleaned by the checkpoint's write


def test_evaluating_another_file_keeps_the_runs_own_metrics_and_history(tiny_backbone, train, tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other.csv"
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    assert run_cli("evaluate", run, "--samples", 2) == 0
    own = (run / "metrics-test.json").read_text()
    reviews(3, seed=7).to_csv(other, index=False)
    assert run_cli("evaluate", run, "--data", other, "--samples", 2) == 0
    assert (run / "metrics-test.json").read_text() == own
    beside = [p for p in run.glob("metrics-other-*.json")]
    assert len(beside) == 1 and json.loads(beside[0].read_text())["samples"]["n"] == 3
    assert json.loads(beside[0].read_text())["data_file"] == str(other)
    capsys.readouterr()
    assert run_cli("history", run) == 0
    shown = capsys.readouterr().out
    assert "metrics-test" in shown and "metrics-other" not in shown


# ---- a run's config reads nothing outside it ----------------------------------------------------------------
def _edit_config(run, change) -> None:
    config = json.loads((run / "config.json").read_text())
    change(config)
    (run / "config.json").write_text(json.dumps(config))


def test_a_configs_data_path_is_not_read_unless_it_is_the_file_the_fit_read(tiny_backbone, train, tmp_path, capsys):
    run, secret = tmp_path / "run", tmp_path / "secrets.csv"
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    assert run_cli("evaluate", run, "--samples", 2) == 0  # its own training file, unchanged: read
    secret.write_text("API_KEY=sk-live-123\n")
    _edit_config(run, lambda c: c["meta"]["source"].update(train=str(secret)))
    for argv in (["evaluate", run, "--samples", 2], ["diagnose", run, "--draws", 10]):
        capsys.readouterr()
        assert run_cli(*argv) == 2
        line = error_line(capsys)
        assert "not read" in line and "API_KEY" not in line and "sk-live" not in line
    _edit_config(run, lambda c: c["meta"]["source"].update(train="../../" + train.name))
    assert run_cli("evaluate", run) == 2
    assert "not read" in error_line(capsys)


def test_a_config_naming_the_hub_does_not_go_to_the_network(tiny_backbone, train, tmp_path, capsys, monkeypatch):
    import pyro_bhpeft.data.hub

    def offline(*args, **kwargs):
        raise AssertionError("went to the hub")

    monkeypatch.setattr(pyro_bhpeft.data.hub, "load_from_hub", offline)
    run = tmp_path / "run"
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    _edit_config(run, lambda c: c["meta"].update(source={"task": "sentiment", "source": "hub"}))
    assert run_cli("evaluate", run) == 2
    assert "network" in error_line(capsys)


def test_history_follows_no_relative_parent(tiny_backbone, train, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    _edit_config(run, lambda c: c["meta"].update(parent="../../etc"))
    capsys.readouterr()
    assert run_cli("history", run) == 0
    out = capsys.readouterr().out
    assert "not followed" in out and out.count("round ") == 1


@pytest.mark.parametrize("where, value", [("num_labels", 300_000), ("num_labels", 1e15), ("rank", 10**12)])
def test_impossible_sizes_in_a_config_are_one_line_before_any_allocation(where, value, tiny_backbone, train, tmp_path,
                                                                         capsys):
    run, new = tmp_path / "run", tmp_path / "new.csv"
    guide = "low-rank" if where == "rank" else "mean-field"
    assert run_cli(*fit_args(tiny_backbone, train, run, "--guide", guide)) == 0
    part = "guide" if where == "rank" else "model"
    _edit_config(run, lambda c: c[part]["kwargs"].update({where: value}))
    reviews(4, seed=2).to_csv(new, index=False)
    capsys.readouterr()
    assert run_cli("evaluate", run, "--data", new) == 2
    line = error_line(capsys)
    assert f"{part}.kwargs.{where}" in line and "not backed by guide.safetensors" in line
    assert len(pd.read_csv(new)) == 4
