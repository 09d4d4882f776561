"""Cloze scoring of multiple choice on a causal LM: each choice's own log-likelihood after its context, under
one posterior draw shared by the question's choices."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import quiz, save_tiny_causal_lm
from pyro_bhpeft import BayesianPEFT, Recipe
from pyro_bhpeft.data.cloze import cloze_context
from pyro_bhpeft.errors import ConfigError


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


def _manual_scores(lm_dir, question: str, choices: list[str]) -> torch.Tensor:
    """Each choice's summed token log-probability after the context, by the plain Hugging Face model."""
    tok, lm = AutoTokenizer.from_pretrained(lm_dir), AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    context = tok.encode(cloze_context("quiz", question), add_special_tokens=False)
    scores = []
    for choice in choices:
        ending = tok.encode(" " + choice, add_special_tokens=False)
        ids = torch.tensor([context + ending])
        with torch.no_grad():
            logp = lm(input_ids=ids).logits[0].log_softmax(-1)
        scores.append(sum(float(logp[len(context) + i - 1, t]) for i, t in enumerate(ending)))
    return torch.tensor(scores)


@pytest.mark.parametrize("scoring", ["cloze", "cloze-mean"])
def test_cloze_scores_are_each_choices_log_likelihood(lm_dir, scoring):
    data = quiz()
    model = BayesianPEFT(lm_dir, task=data, mc_scoring=scoring, guide="mle", max_length=40, batch_size=4)
    model.fit(data, max_steps=1, lr=1e-9, progress=False)  # B stays ~0: the adapted model is the base model
    assert model.spec.kind == {"cloze": "cloze_choice", "cloze-mean": "cloze_choice_mean"}[scoring]
    inputs = next(iter(model.loader(data)))[0]
    with torch.no_grad():
        scores = model.model.run(model.posterior.mean(), inputs)  # (questions, choices)
    rows = data.splits["test"]
    for q in range(len(rows)):
        expected = _manual_scores(lm_dir, rows[q]["question"], rows[q]["choices"])
        if scoring == "cloze-mean":
            tok = AutoTokenizer.from_pretrained(lm_dir)
            expected = expected / torch.tensor([len(tok.encode(" " + c, add_special_tokens=False))
                                                for c in rows[q]["choices"]])
        torch.testing.assert_close(scores[q], expected, rtol=0, atol=1e-4)


def test_a_cloze_fit_predicts_saves_and_loads(lm_dir, tmp_path):
    data = quiz()
    model = BayesianPEFT(lm_dir, task=data, mc_scoring="cloze", r=2, max_length=40, batch_size=2, init_scale=0.05)
    model.fit(data, epochs=2, progress=False)
    pred = model.predict(data, samples=4)
    assert pred.probs.shape == (4, 3) and torch.allclose(pred.probs.sum(-1), torch.ones(4))
    assert float(pred.mutual_information.mean()) > 0
    model.save(tmp_path / "run")
    back = BayesianPEFT.load(tmp_path / "run")
    torch.testing.assert_close(back.predict(data, samples=4).probs, pred.probs, rtol=0, atol=0)


def test_unknown_scoring_and_a_choice_longer_than_max_length_are_one_line(lm_dir):
    with pytest.raises(ConfigError, match="unknown mc_scoring"):
        Recipe(mc_scoring="letter")
    from pyro_bhpeft.data import DataError

    data = quiz()
    long = data.splits["train"].map(lambda row: {"choices": [c + " or a stone or a wood" for c in row["choices"]]})
    data = type(data)(data.spec, type(data.splits)({"train": long}))
    model = BayesianPEFT(lm_dir, task=data, mc_scoring="cloze", max_length=4)
    with pytest.raises(DataError, match="raise max_length"):
        model.fit(data, progress=False)


def test_a_cloze_comparison_scores_each_choices_likelihood_and_refuses_the_peers_it_cannot_run(lm_dir, tmp_path):
    """compare with mc_scoring="cloze": a LoRA that has not moved (lr 1e-9, one step) predicts the softmax of
    the base model's choice log-likelihoods; the methods trained through the peft library cannot score that way,
    and the last-layer Laplace head has no linear head to work on."""
    import json

    import numpy as np

    from pyro_bhpeft.compare import Protocol, run_compare

    data = quiz()
    protocol = Protocol(task="quiz", backbone=lm_dir, train_size=4, eval_size=4, epochs=1, batch_size=2, lr=1e-9,
                        max_length=40, samples=2, max_steps=1, ood_task="", mc_scoring="cloze")
    assert protocol.recipe(0).mc_scoring == "cloze" and Protocol().to_dict().get("mc_scoring") is None
    with pytest.raises(ConfigError, match="peft library"):
        run_compare(protocol, tmp_path / "refused", methods=("lora", "laplace-kfac"), seeds=(0,), data=data,
                    progress=False)
    with pytest.raises(ConfigError, match="lora-llla needs a linear classifier head"):  # no head to be Bayesian about
        run_compare(protocol, tmp_path / "refused", methods=("lora-llla",), seeds=(0,), data=data, progress=False)
    assert not (tmp_path / "refused").exists()  # refused before anything was written
    out = tmp_path / "cmp"
    run_compare(protocol, out, methods=("lora",), seeds=(0,), data=data, progress=False)
    assert json.loads((out / "protocol.json").read_text())["mc_scoring"] == "cloze"
    with np.load(out / "cells" / "lora-seed0" / "predictions.npz") as f:
        probs, labels = torch.from_numpy(f["test_probs"]), f["test_labels"]
    rows = data.splits["test"]  # eval_size covers the split: every row, in order
    assert labels.tolist() == list(rows["label"])
    expected = torch.stack([_manual_scores(lm_dir, rows[q]["question"], rows[q]["choices"]).softmax(-1)
                            for q in range(len(rows))])
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-4)


def test_right_padding_is_trimmed_to_the_longest_row_and_changes_no_score(lm_dir):
    data = quiz()
    model = BayesianPEFT(lm_dir, task=data, mc_scoring="cloze", guide="mle", max_length=40, batch_size=4)
    model.fit(data, max_steps=1, lr=1e-9, progress=False)
    inputs = next(iter(model.loader(data)))[0]
    assert inputs["input_ids"].shape[-1] < 40 and bool(inputs["attention_mask"][..., -1].any())  # the longest row
    padded = {k: torch.nn.functional.pad(v, (0, 40 - v.shape[-1])) for k, v in inputs.items()}  # mask 0 there
    weights = model.posterior.mean()
    with torch.no_grad():
        torch.testing.assert_close(model.model.run(weights, inputs), model.model.run(weights, padded), rtol=0,
                                   atol=1e-5)


def test_scoring_the_shared_context_once_changes_no_score_gradient_or_flipout_draw(lm_dir, monkeypatch):
    """run() passes each question's context once and its choices on the cached keys and values: the scores, their
    gradients and, under flipout, the perturbation per question are those of one pass over every full row."""
    from pyro_bhpeft.models.cloze import ClozeChoice
    from pyro_bhpeft.models.effects import Flipout

    data = quiz()
    model = BayesianPEFT(lm_dir, task=data, mc_scoring="cloze", guide="mle", r=2, max_length=40, batch_size=4)
    model.fit(data, max_steps=1, lr=1e-9, progress=False)
    inputs = next(iter(model.loader(data)))[0]
    cloze = model.model
    flat = {k: v for k, v in cloze.flatten_inputs(inputs).items()}
    context, rest = cloze._split(flat, inputs["input_ids"].shape[1])
    assert rest["input_ids"].shape[1] < flat["input_ids"].shape[1] and context["input_ids"].shape[1] > 2
    gen = torch.Generator().manual_seed(0)
    weights = {k: (0.3 * torch.randn(v.shape, generator=gen)).requires_grad_() for k, v in model.posterior.mean().items()}
    locs = {k: 0.3 * torch.randn(v.shape, generator=gen) for k, v in weights.items() if k.endswith("lora_A")}

    def scored(share: bool, flipout: bool):
        monkeypatch.setattr(ClozeChoice, "share_context", property(lambda self: share))
        torch.manual_seed(1)
        if flipout:
            with Flipout(locs.get):
                scores = cloze.run(weights, inputs)
        else:
            scores = cloze.run(weights, inputs)
        grads = torch.autograd.grad(scores.logsumexp(-1).sum() - scores[:, 0].sum(), list(weights.values()))
        return scores.detach(), grads

    for flipout in (False, True):
        (once, g_once), (full, g_full) = scored(True, flipout), scored(False, flipout)
        torch.testing.assert_close(once, full, rtol=0, atol=1e-5)
        for a, b in zip(g_once, g_full):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(scored(True, True)[0], scored(True, False)[0], atol=1e-3)  # flipout perturbed them
