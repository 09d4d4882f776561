"""ABMLL: the hierarchical prior, amortized task posteriors and the meta-fit, with known answers on a
linear-Gaussian hierarchical model (tasks with their own means drawn around a global mean)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import NOISE, FeatureBackbone, save_tiny_causal_lm, tiny_bert, token_batch

from pyro_bhpeft import PeftConfig, predict
from pyro_bhpeft.config import ConfigError
from pyro_bhpeft.meta import HierarchicalPrior, MetaConfig, adapt, meta_fit, to_posterior
from pyro_bhpeft.models import MultipleChoice, Regressor
from pyro_bhpeft.layers.delta import DeltaConfig
from pyro_bhpeft.guides import Delta
from pyro_bhpeft.posterior import Posterior

T, N = 4, 10  # tasks, examples per task


def _tasks(seed: int = 0, shift: float = 0.0):
    """y_ij = b_i + NOISE eps, b_i ~ N(1, 0.8^2): features are 0, so only the head's bias matters."""
    g = torch.Generator().manual_seed(seed)
    b = 1.0 + 0.8 * torch.randn(T, generator=g)
    b[1] += shift
    return {f"t{i}": [({"input_ids": torch.zeros(N, 1, 1)}, b[i] + NOISE * torch.randn(N, generator=g))]
            for i in range(T)}


def _model():
    return Regressor(FeatureBackbone(dim=1), PeftConfig(lora=None), noise_scale=NOISE, pooling="cls")


def _closed_form(tasks):
    """Type-II maximum likelihood of (mu, sigma) and each task's exact posterior of b_i given them."""
    means = torch.stack([batches[0][1].mean() for batches in tasks.values()])
    mu = means.mean()
    sigma2 = ((means - mu) ** 2).mean() - NOISE ** 2 / N
    precision = 1 / sigma2 + N / NOISE ** 2
    post_mean = (mu / sigma2 + N * means / NOISE ** 2) / precision
    return float(mu), float(sigma2.sqrt()), post_mean, float(precision ** -0.5)


FIT = MetaConfig(steps=100, tasks_per_step=T, support=N, query=0, inner_steps=30, inner_lr=0.3, gamma=0.0,
                 lr=0.05, c_ratio=0.3)  # the prior starts at N(0, 0.3^2); the answer is about N(0.82, 1.05^2)


def test_meta_fit_recovers_type_two_maximum_likelihood_and_the_task_posteriors():
    tasks = _tasks()
    model = _model()
    prior = meta_fit(model, tasks, FIT, progress=False).prior
    mu, sigma, post_mean, post_sd = _closed_form(tasks)
    fit_mu, fit_sigma = float(prior.mean("head.bias").detach()), float(prior.scale("head.bias").detach())
    assert abs(fit_mu - mu) < 0.1 and abs(fit_sigma - sigma) / sigma < 0.15, (fit_mu, fit_sigma, mu, sigma)
    precision = 1 / fit_sigma ** 2 + N / NOISE ** 2  # each task's exact posterior under the fitted prior
    for i, (name, batches) in enumerate(tasks.items()):  # amortized posteriors: gradient steps from the prior
        loc, scale = adapt(model, prior, batches, steps=200, lr=0.3, num_data=N).marginals()
        exact = (fit_mu / fit_sigma ** 2 + N * float(batches[0][1].mean()) / NOISE ** 2) / precision
        assert abs(float(loc["head.bias"]) - exact) < 0.05, name
        assert abs(float(scale["head.bias"]) - precision ** -0.5) / precision ** -0.5 < 0.25, name
        assert abs(float(loc["head.bias"]) - float(post_mean[i])) < 0.1, name  # and the closed form's own
    assert abs(precision ** -0.5 - post_sd) / post_sd < 0.1


def test_beta_zero_decouples_the_tasks():
    """Without the KL term theta learns nothing and each task's adapted posterior is its own maximum-likelihood
    fit, whatever the other tasks' data; with it, theta follows the tasks."""
    fits = []
    for shift in (0.0, 3.0):  # task t1's data shifted by 3
        tasks = _tasks(shift=shift)
        model = _model()
        start = HierarchicalPrior.for_model(model, c_ratio=FIT.c_ratio)
        init = [p.detach().clone() for p in start.parameters()]
        prior = meta_fit(model, tasks, MetaConfig(**{**FIT.__dict__, "beta": 0.0, "steps": 3}), prior=start,
                         progress=False).prior
        assert all(torch.equal(a, b) for a, b in zip(init, prior.parameters()))
        fits.append(float(adapt(model, prior, tasks["t0"], steps=300, lr=0.1, beta=0.0, num_data=N).marginals()[0]["head.bias"]))
    own = float(_tasks()["t0"][0][1].mean())
    assert abs(fits[0] - own) < 0.03 and abs(fits[1] - own) < 0.03
    model = _model()
    prior = meta_fit(model, _tasks(), MetaConfig(**{**FIT.__dict__, "steps": 10}), progress=False).prior
    assert float(prior.mean("head.bias").detach()) > 0.2  # from 0 towards the tasks' mean (0.82)


def test_hierarchical_prior_is_low_rank_for_matrices_starts_at_c_and_round_trips():
    model = MultipleChoice(tiny_bert(), PeftConfig(lora=None, delta=DeltaConfig(target_modules=("query",))))
    prior = HierarchicalPrior.for_model(model, rank=2, c_ratio=0.1)
    name = "encoder.layer.0.attention.self.query.delta"
    weight = model.backbone.encoder.layer[0].attention.self.query.base.weight
    assert set(prior.factors[name]) == {"mu_B", "mu_A", "s_B", "s_A"} and prior.factors[name]["mu_A"].shape == (2, 32)
    assert torch.equal(prior.mean(name), torch.zeros(32, 32))  # B = 0: the prior is centred on the pretrained model
    torch.testing.assert_close(prior.scale(name), torch.full((32, 32), 0.1 * float(weight.std())))
    assert set(prior.factors["head.weight"]) == {"mu", "s"}  # (1, hidden): per entry
    torch.testing.assert_close(prior.scale("head.weight"), torch.full((1, 32), 0.1 / math.sqrt(32)))
    assert len(prior.parameters()) == 2 * 4 + 2 * 2
    from pyro_bhpeft.priors import prior_from_dict
    again = prior_from_dict(prior.to_dict(), prior.tensors())
    for n in prior.factors:
        assert torch.equal(again.mean(n), prior.mean(n)) and torch.equal(again.scale(n), prior.scale(n))
    with pytest.raises(ConfigError, match="noise scale"):
        HierarchicalPrior.for_model(Regressor(FeatureBackbone(dim=1), PeftConfig(lora=None), pooling="cls"))


def test_tiny_meta_fit_end_to_end_adapts_saves_loads_and_predicts(tmp_path):
    """Random tiny BERT, two multiple-choice tasks: theta moves, a new task adapts in 3 steps, and its posterior
    saves, loads and predicts like any other (the same probabilities)."""
    model = MultipleChoice(tiny_bert(), PeftConfig(lora=None, delta=DeltaConfig(target_modules=("query", "value"))))
    tasks = {}
    for t in range(2):
        batch = token_batch(6, 7, choices=3, seed=t)
        tasks[f"task{t}"] = [(batch, torch.arange(6) % 3)]
    config = MetaConfig(steps=3, tasks_per_step=2, support=3, query=3, inner_steps=2, rank=2)
    model_prior = HierarchicalPrior.for_model(model, rank=2, c_ratio=config.c_ratio)
    before = [p.detach().clone() for p in model_prior.parameters()]
    result = meta_fit(model, tasks, config, prior=model_prior, progress=False)
    assert len(result.history) == 3 and all(math.isfinite(h) for h in result.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, result.prior.parameters()))
    new = [(token_batch(4, 7, choices=3, seed=9), torch.arange(4) % 3)]
    posterior = to_posterior(adapt(model, result.prior, new, steps=3), task="new")
    posterior.save(tmp_path / "run")
    loaded = Posterior.load(tmp_path / "run", backbone=tiny_bert())
    assert isinstance(loaded.model.prior, HierarchicalPrior)
    a, b = predict(posterior, new, num_samples=4, seed=0), predict(loaded, new, num_samples=4, seed=0)
    torch.testing.assert_close(a.probs, b.probs)
    assert a.probs.shape == (4, 3) and (a.mutual_information > 0).all()


@pytest.mark.slow
def test_meta_fit_and_meta_evaluate_commands(tiny_backbone, tmp_path, capsys):
    """The command line on the packaged tasks with a tiny backbone: a run that loads, an adapted score, and
    one-line errors for a task of another kind and an existing run."""
    import json

    from pyro_bhpeft.cli import main

    run = tmp_path / "meta"
    args = ["meta-fit", "--tasks", "arc-easy,piqa", "--backbone", tiny_backbone, "--per-task", "8", "--steps", "2",
            "--support", "2", "--query", "2", "--inner-steps", "1", "--rank", "2", "--max-length", "24", "--out", str(run)]
    assert main(args) == 0
    assert isinstance(Posterior.load(run).model.prior, HierarchicalPrior)
    capsys.readouterr()
    assert main(["meta-evaluate", str(run), "--task", "winogrande", "--support", "4", "--steps", "2", "--samples", "2",
                 "--eval-size", "6", "--save", str(tmp_path / "adapted")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "winogrande" and 0 <= result["accuracy"] <= 1 and result["samples"] == 2
    assert Posterior.load(tmp_path / "adapted").meta["abmll_task"] == "winogrande"
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*args[:2], "arc-easy,sentiment", *args[3:-1], str(tmp_path / "other")]) == 2
    assert "multiple-choice" in capsys.readouterr().err


def test_a_shared_answer_head_masks_the_letters_a_task_lacks(tmp_path):
    """On a decoder, tasks of 2 to 5 choices share one head of letters: a 2-choice task's batch hides C..E
    (probability 0), and the letters it has keep their logits."""
    from pyro_bhpeft.backbone import load_backbone
    from pyro_bhpeft.meta import _Masked
    from pyro_bhpeft.models import AnswerChoice

    lm = load_backbone(save_tiny_causal_lm(tmp_path))
    model = AnswerChoice(lm.model, PeftConfig(lora=None, delta=DeltaConfig()), answer_ids=(5, 6, 7, 8, 9))
    plain = [(token_batch(3, 6, pad=0), torch.tensor([0, 1, 1]))]
    masked = list(_Masked(plain, choices=2, answers=5))
    assert masked[0][0]["choice_mask"].tolist() == [[True, True, False, False, False]] * 3
    weights = {k: v + 0.1 for k, v in model.initial_values().items()}
    with torch.no_grad():
        full, hidden = model.run(weights, plain[0][0]), model.run(weights, masked[0][0])
    assert torch.equal(hidden[:, :2], full[:, :2]) and (hidden[:, 2:] == float("-inf")).all()
    probs = predict(Posterior(model, Delta(model)), masked, num_samples=0).probs
    assert (probs[:, 2:] == 0).all() and torch.allclose(probs.sum(-1), torch.ones(3))


@pytest.mark.slow
def test_meta_fit_on_a_causal_lm_scores_answer_letters_across_tasks(tmp_path, capsys):
    """The command line on packaged tasks of 4 and 2 choices with a tiny causal LM: one head of 4 letters, an
    unseen 3-choice task adapted and scored with its 4th letter masked, and a one-line error for an unseen
    task with more choices than the head."""
    import json

    from pyro_bhpeft.cli import main

    lm_dir, run = save_tiny_causal_lm(tmp_path / "lm"), tmp_path / "meta"
    args = ["meta-fit", "--tasks", "arc-easy,piqa", "--backbone", lm_dir, "--per-task", "8", "--steps", "2",
            "--support", "2", "--query", "2", "--inner-steps", "1", "--rank", "2", "--max-length", "40", "--out", str(run)]
    assert main(args) == 0
    fitted = Posterior.load(run)
    assert type(fitted.model).__name__ == "AnswerChoice" and len(fitted.model.answer_ids) == 4
    capsys.readouterr()
    assert main(["meta-evaluate", str(run), "--task", "socialiqa", "--support", "4", "--steps", "2", "--samples", "2",
                 "--eval-size", "6", "--save", str(tmp_path / "adapted")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "socialiqa" and 0 <= result["accuracy"] <= 1 and math.isfinite(result["nll"])
    two = tmp_path / "two"
    assert main([*args[:2], "piqa,winogrande", *args[3:-1], str(two)]) == 0
    capsys.readouterr()
    assert main(["meta-evaluate", str(two), "--task", "arc-easy", "--support", "2", "--steps", "1", "--samples", "1",
                 "--eval-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arc-easy has 4 choices; this meta-fitted head answers at most 2" in err[0]


def test_task_kl_in_whitened_units_is_the_closed_form_normal_kl():
    model = _model()
    prior = HierarchicalPrior.for_model(model, c_ratio=0.7)
    guide = adapt(model, prior, _tasks()["t0"], steps=5, lr=0.3, num_data=N)
    import pyro.distributions as dist
    from torch.distributions import kl_divergence

    exact = sum(float(kl_divergence(dist.Normal(*guide.marginal(n)), dist.Normal(prior.mean(n), prior.scale(n))).sum().detach())
                for n in model.sites)
    assert exact > 0.1 and abs(guide.kl() - exact) < 1e-4 * max(1.0, exact)
