"""The one-forward closed-form predictive: exact logit moments against 100,000 head draws, the full sampler
where only the head is random, zero variance giving the mean's softmax, and the last-layer Laplace precision
equal to the diagonal of the true Hessian."""

from __future__ import annotations

import math

import pytest

import torch
import torch.nn.functional as F

from helpers import tiny_bert, token_batch
from pyro_bhpeft import PeftConfig, Posterior, priors
from pyro_bhpeft.closed_form import (HeadGaussian, bridge_mutual_information, closed_form_predict,
                                     evidence_precision, head_gaussian, last_layer_laplace, logit_moments)
from pyro_bhpeft.guides import MeanField
from pyro_bhpeft.models import SequenceClassifier
from pyro_bhpeft.predict import predict


def _head_only_posterior(scale: float, classes: int = 3) -> Posterior:
    """A classifier on a tiny BERT whose only random sites are the head's, with known locs and scales."""
    model = SequenceClassifier(tiny_bert(), PeftConfig(lora=None), priors.Normal(1.0), num_labels=classes)
    g = torch.Generator().manual_seed(1)
    locs = {"head.weight": torch.randn(classes, model.hidden_size, generator=g) * 0.5,
            "head.bias": torch.randn(classes, generator=g) * 0.5}
    scales = {n: torch.full_like(v, scale) for n, v in locs.items()}
    return Posterior(model, MeanField.from_marginals(model, locs, scales))


def _batches(n: int = 6):
    inputs = token_batch(n=n, seq=7)
    return [(inputs, torch.zeros(n, dtype=torch.long))]


def test_logit_moments_match_100000_head_draws():
    posterior = _head_only_posterior(scale=0.3)
    inputs = _batches()[0][0]
    weights = posterior.mean()
    features = posterior.model.features(weights, inputs)
    head = head_gaussian(posterior)
    mean, var = logit_moments(posterior.model, weights, features, inputs, head)
    g = torch.Generator().manual_seed(0)
    n = 100_000
    w = head.loc["head.weight"] + head.var["head.weight"].sqrt() * torch.randn(n, *head.loc["head.weight"].shape, generator=g)
    b = head.loc["head.bias"] + head.var["head.bias"].sqrt() * torch.randn(n, *head.loc["head.bias"].shape, generator=g)
    logits = torch.einsum("kch,nh->knc", w, features) + b[:, None, :]  # (draws, rows, classes)
    torch.testing.assert_close(mean, logits.mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(var, logits.var(0), rtol=0.03, atol=1e-3)


def test_closed_form_is_close_to_the_full_sampler_where_only_the_head_is_random():
    posterior = _head_only_posterior(scale=0.2)  # logit variances about 1: a posterior far from a point
    sampled = predict(posterior, _batches(), num_samples=4000, seed=0)
    closed = closed_form_predict(posterior, _batches())
    plain = predict(posterior, _batches(), num_samples=0)  # the mean's softmax, ignoring the variance
    error, plain_error = (closed.probs - sampled.probs).abs().max(), (plain.probs - sampled.probs).abs().max()
    assert error < 0.025 and error < plain_error / 2  # measured: 0.019 against 0.053
    assert closed.num_samples == 0 and closed.labels.tolist() == [0] * 6
    assert torch.allclose(closed.probs.sum(-1), torch.ones(6))


def test_zero_variance_gives_the_means_softmax_and_no_epistemic_part():
    posterior = _head_only_posterior(scale=0.3)
    loc = head_gaussian(posterior).loc
    point = HeadGaussian(loc, {n: torch.zeros_like(v) for n, v in loc.items()})
    closed = closed_form_predict(posterior, _batches(), head=point)
    mean = predict(posterior, _batches(), num_samples=0)
    torch.testing.assert_close(closed.probs, mean.probs, rtol=0, atol=1e-6)
    assert float(closed.mutual_information.max()) < 1e-4


def test_mutual_information_grows_with_the_head_variance():
    mean = torch.tensor([[1.0, 0.0, -1.0]])
    values = [float(bridge_mutual_information(mean, torch.full((1, 3), v))) for v in (0.01, 0.1, 1.0, 10.0)]
    assert values == sorted(values) and values[0] > 0


def test_last_layer_laplace_precision_is_the_diagonal_of_the_hessian():
    posterior = _head_only_posterior(scale=0.3)
    batches = [(token_batch(n=5, seq=7, seed=s), torch.zeros(5, dtype=torch.long)) for s in (0, 1)]
    head = last_layer_laplace(posterior, batches, prior_precision=2.0)
    loc = head_gaussian(posterior).loc
    features = torch.cat([posterior.model.features(posterior.mean(), b[0]) for b in batches])
    targets = torch.cat([b[1] for b in batches])

    def nll(w, b):
        return F.cross_entropy(F.linear(features, w, b), targets, reduction="sum")

    hessian_w, hessian_b = torch.autograd.functional.hessian(nll, (loc["head.weight"], loc["head.bias"]))
    diag_w = torch.diagonal(hessian_w[0].reshape(loc["head.weight"].numel(), -1)).reshape(loc["head.weight"].shape)
    diag_b = torch.diagonal(hessian_b[1])
    torch.testing.assert_close(1.0 / head.var["head.weight"], 2.0 + diag_w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(1.0 / head.var["head.bias"], 2.0 + diag_b, rtol=1e-4, atol=1e-5)


def _evidence(a: float, loc: dict, curvature: dict) -> float:
    """The Laplace log evidence's terms that depend on the prior precision a (prior N(0, 1/a) per parameter)."""
    theta2 = sum(float(v.double().pow(2).sum()) for v in loc.values())
    h = torch.cat([c.double().reshape(-1) for c in curvature.values()])
    return 0.5 * len(h) * math.log(a) - 0.5 * a * theta2 - 0.5 * float(torch.log(a + h).sum())


def test_evidence_precision_has_its_closed_forms_at_the_two_limits():
    loc = {"w": torch.tensor([1.0, -2.0, 2.0])}  # |theta|^2 = 9
    assert evidence_precision(loc, {"w": torch.full((3,), 1e9)}) == pytest.approx(3 / 9, rel=1e-6)  # P / |theta|^2
    assert evidence_precision(loc, {"w": torch.zeros(3)}) == 1e-4  # no curvature: the widest prior allowed


def test_evidence_precision_maximises_the_laplace_evidence():
    g = torch.Generator().manual_seed(0)
    loc = {"head.weight": torch.randn(3, 8, generator=g), "head.bias": torch.randn(3, generator=g)}
    curvature = {n: torch.rand(v.shape, generator=g) * 20 for n, v in loc.items()}
    best = evidence_precision(loc, curvature)
    grid = [10 ** (k / 200) for k in range(-800, 801)]
    on_grid = max(grid, key=lambda a: _evidence(a, loc, curvature))
    assert best == pytest.approx(on_grid, rel=0.02) and 1e-4 < best < 1e4
    assert _evidence(best, loc, curvature) >= _evidence(on_grid, loc, curvature) - 1e-9


def test_a_marglik_laplace_head_uses_the_evidence_precision_of_its_own_curvature():
    posterior = _head_only_posterior(scale=0.3)
    batches = [(token_batch(n=5, seq=7, seed=s), torch.zeros(5, dtype=torch.long)) for s in (0, 1)]
    fixed = last_layer_laplace(posterior, batches, prior_precision=1.0)
    curvature = {n: 1.0 / v - 1.0 for n, v in fixed.var.items()}
    head = last_layer_laplace(posterior, batches, prior_precision="marglik")
    assert head.prior_precision == pytest.approx(evidence_precision(head.loc, curvature), rel=1e-5)
    for n, c in curvature.items():
        torch.testing.assert_close(1.0 / head.var[n], head.prior_precision + c, rtol=1e-4, atol=1e-4)
