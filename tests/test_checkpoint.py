"""Checkpoint and resume: an interrupted fit resumed from its checkpoint ends where an uninterrupted one does."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from helpers import tiny_bert, token_batch

from pyro_bhpeft import LoraConfig, PeftConfig, fit, priors
from pyro_bhpeft.checkpoint import Checkpoint, FitInterrupted
from pyro_bhpeft.infer import KLStep, _Steps
from pyro_bhpeft.models import SequenceClassifier
from pyro_bhpeft.recipe import PRESETS, Recipe, build_guide


def _data(n=12):
    batch = token_batch(n)
    labels = torch.arange(n) % 2
    return [({k: v[i:i + 4] for k, v in batch.items()}, labels[i:i + 4]) for i in range(0, n, 4)]


def _fit(checkpoint=None, preset="blob", prior=None):
    recipe = Recipe().with_(**{**PRESETS[preset], "peft": PeftConfig(lora=LoraConfig(r=2))})
    model = SequenceClassifier(tiny_bert(), recipe.peft, prior or recipe.make_prior(), num_labels=2)
    guide = build_guide(recipe, model)
    kl_step = KLStep(recipe.kl_step_lr) if recipe.kl_step_lr else None
    result = fit(model, guide, _data(), num_data=12, epochs=3, lr=0.01, scale_lr=recipe.scale_lr,
                 flipout=recipe.flipout, kl_step=kl_step, warmup_ratio=0.2, lr_decay="linear", seed=3,
                 progress=False, checkpoint=checkpoint)
    return result, {k: v.detach().clone() for k, v in guide.state_dict().items()}


def _interrupt_at(monkeypatch, call: int):
    """Send Ctrl-C to this process during the ``call``-th training step (the fit stops after it)."""
    take, calls = _Steps.take, []

    def take_and_interrupt(self, *args):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return take(self, *args)

    monkeypatch.setattr(_Steps, "take", take_and_interrupt)


@pytest.mark.parametrize("preset", ["blob", "bayes-lora-fs"])
def test_an_interrupted_fit_resumes_to_the_uninterrupted_posterior(tmp_path, monkeypatch, preset):
    whole, expected = _fit(preset=preset)
    checkpoint = Checkpoint(tmp_path / "fit.checkpoint.pt", every=2, identity={"preset": preset})
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 5)
        with pytest.raises(FitInterrupted, match="interrupted at step 5 of 9") as stopped:
            _fit(checkpoint, preset=preset)
    assert stopped.value.path == checkpoint.path and checkpoint.path.is_file()
    resumed, got = _fit(checkpoint.resuming(), preset=preset)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert resumed.history == whole.history and resumed.steps == 9  # the curves continue the saved ones


def test_learned_prior_scales_are_checkpointed_too(tmp_path, monkeypatch):
    def learned():
        return priors.Learned(0.5)

    _, expected = _fit(preset="bayes-lora-fs", prior=learned())
    checkpoint = Checkpoint(tmp_path / "c.pt")  # every=0: saved only on the interrupt
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 4)
        with pytest.raises(FitInterrupted):
            _fit(checkpoint, preset="bayes-lora-fs", prior=learned())
    prior = learned()
    resumed, got = _fit(checkpoint.resuming(), preset="bayes-lora-fs", prior=prior)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_resume_refuses_a_missing_checkpoint_or_one_of_another_recipe(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no checkpoint at .* to resume from"):
        _fit(Checkpoint(tmp_path / "none.pt", resume=True))
    checkpoint = Checkpoint(tmp_path / "c.pt", identity={"lr": 1})
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        with pytest.raises(FitInterrupted):
            _fit(checkpoint)
    with pytest.raises(ValueError, match="belongs to a fit with another recipe"):
        _fit(Checkpoint(tmp_path / "c.pt", resume=True, identity={"lr": 2}))


def test_ctrl_c_in_the_cli_keeps_a_checkpoint_and_resume_finishes_the_run(tiny_backbone, tmp_path, monkeypatch, capsys):
    from helpers import reviews

    from pyro_bhpeft.cli import main

    train, run = tmp_path / "train.csv", tmp_path / "run"
    reviews(48).to_csv(train, index=False)
    args = ["fit", "--train", str(train), "--text-column", "review", "--label-column", "sentiment", "--backbone",
            tiny_backbone, "--epochs", "2", "--batch-size", "8", "--max-length", "16", "--out", str(run)]
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 3)
        assert main(args + ["--checkpoint-every", "2"]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted at step 3 of 10" in err and "--resume" in err
    assert not run.exists() and (tmp_path / "run.checkpoint.safetensors").is_file()
    assert main(args + ["--resume"]) == 0
    assert not (tmp_path / "run.checkpoint.safetensors").exists()
    assert (run / "guide.safetensors").read_bytes() == (tmp_path / "whole" / "guide.safetensors").read_bytes()


def test_state_files_hold_nested_values_without_pickle_and_refuse_what_they_cannot_back(tmp_path):
    import json
    import random
    import struct

    import numpy as np

    from pyro_bhpeft.safe_state import StateError, read_header, read_state, tensor_shapes, write_state

    state = {"rng": {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()},
             "optim": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 3)}},
                       "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]},
             "curves": {"kl": [float("nan"), 1.5]}, "step": 7}
    path = write_state(tmp_path / "s.safetensors", state, header={"identity": {"recipe": 1}})
    assert read_header(path) == {"identity": {"recipe": 1}} and tensor_shapes(path)
    back = read_state(path)
    assert back["optim"]["state"][0]["exp_avg"].equal(torch.ones(2, 3))
    assert back["optim"]["param_groups"][0]["betas"] == (0.9, 0.999) and back["rng"]["random"] == random.getstate()
    assert back["rng"]["numpy"][0] == "MT19937" and np.array_equal(back["rng"]["numpy"][1], np.random.get_state()[1])
    assert back["rng"]["torch"].equal(torch.get_rng_state()) and back["curves"]["kl"][0] != back["curves"]["kl"][0]
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(StateError, match="claims more than the file holds"):
        read_state(tmp_path / "big.safetensors")
