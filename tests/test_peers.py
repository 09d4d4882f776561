"""Peers through the libraries users would pick: IVON (ivon-opt) reaches the exact posterior of Bayesian linear
regression, and our ECE, NLL and Brier read the same as torchmetrics' (the numbers of BLoB's and BAG's tables)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import D, NOISE, regression_data

from pyro_bhpeft.analysis import metrics
from pyro_bhpeft.baselines import ivon_optimizer


def test_ivon_reaches_the_exact_posterior_of_bayesian_linear_regression():
    x, y = regression_data(0)
    n, prior_precision = len(y), 1.0
    features = torch.cat([x, torch.ones(n, 1)], 1)
    precision = features.T @ features / NOISE ** 2 + prior_precision * torch.eye(D + 1)
    mean = torch.linalg.solve(precision, features.T @ y / NOISE ** 2)
    sd = torch.linalg.inv(precision).diag().sqrt()
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(D + 1))
    # the IVON-LoRA settings, with a learning rate and beta2 for a 4-weight problem and the prior as weight decay
    optimizer = ivon_optimizer([w], n, lr=0.1, hess_init=1.0, beta2=0.999, weight_decay=prior_precision / n,
                               clip_radius=float("inf"))
    for _ in range(3000):
        with optimizer.sampled_params(train=True):
            optimizer.zero_grad()
            (((y - features @ w) ** 2).mean() / (2 * NOISE ** 2)).backward()
        optimizer.step()
    ivon_sd = 1 / (n * (optimizer.param_groups[0]["hess"] + prior_precision / n)).sqrt()
    assert ((w.detach() - mean).abs() < 0.5 * sd).all()  # the posterior mean, to half a posterior sd
    torch.testing.assert_close(ivon_sd, sd, rtol=0.15, atol=0)  # the diagonal of the posterior, within 15 %


@pytest.mark.parametrize("classes", [2, 5])
def test_ece_nll_and_brier_read_as_torchmetrics(classes):
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(400, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, classes, 400)
    p, y = torch.tensor(probs), torch.tensor(labels)
    reference = tm.multiclass_calibration_error(p, y, num_classes=classes, n_bins=15, norm="l1")
    assert metrics.ece(probs, labels) == pytest.approx(100 * float(reference), abs=1e-4)  # torchmetrics: float32
    assert metrics.nll(probs, labels) == pytest.approx(float(torch.nn.functional.nll_loss(p.log(), y)), abs=1e-9)
    onehot = torch.nn.functional.one_hot(y, classes).double()
    assert metrics.brier(probs, labels) == pytest.approx(float(((p - onehot) ** 2).sum(1).mean()), abs=1e-9)
