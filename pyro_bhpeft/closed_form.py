"""Uncertainty at the price of one forward pass: a Gaussian over the task head, pushed through in closed form.

Every task head here is linear in its weights: ``logits = W f + b`` on the pooled features ``f``. With the
PEFT weights at their posterior mean (one backbone forward) and independent Normals on the head's weights,
the logits are Gaussian with

    mean_c = sum_j E[W_cj] f_j + E[b_c]          var_c = sum_j Var[W_cj] f_j^2 + Var[b_c]

(exact). The class probabilities use the probit approximation, ``softmax(mean / sqrt(1 + pi var / 8))``;
the epistemic part (mutual information) is that of the Laplace bridge's Dirichlet (Hobbhahn et al. 2022),
``alpha_c = (1 - 2/C + exp(mean_c) sum_l exp(-mean_l) / C^2) / var_c``. No draws are taken.

The head's Gaussian comes from the run's own posterior (:func:`head_gaussian`: exact for a run whose only
random sites are the head's) or, for a point estimate (deterministic LoRA, a peft adapter brought in), from a
diagonal last-layer Laplace approximation on training data (:func:`last_layer_laplace`).

Example::

    pred = closed_form_predict(posterior, test_loader)                       # its own head posterior
    head = last_layer_laplace(point, train_loader, prior_precision=1.0)       # a point estimate
    pred = closed_form_predict(point, test_loader, head=head)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from .predict import ClassPrediction, _entropy, _split

__all__ = ["HeadGaussian", "head_gaussian", "last_layer_laplace", "evidence_precision", "closed_form_predict", "logit_moments",
           "probit_probs", "bridge_mutual_information"]

_HEAD = ("head.weight", "head.bias")


@dataclass(frozen=True)
class HeadGaussian:
    """Independent Normals over the head's sites: ``loc`` and ``var`` by site name (``head.weight`` (C, H),
    ``head.bias`` (C,)); ``prior_precision``: the Laplace prior's precision where a Laplace head built it."""

    loc: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor]
    prior_precision: float | None = None


def head_gaussian(posterior: Any) -> HeadGaussian:
    """The head's marginal posterior of a fitted run (a point-mass head has zero variance)."""
    marginals = posterior.marginals()
    missing = [n for n in _HEAD if n not in marginals]
    if missing:
        raise ValueError(f"the model has no {', '.join(missing)} site: the closed form needs a linear head")
    loc = {n: marginals[n].loc.detach().float() for n in _HEAD}
    var = {n: (marginals[n].scale.detach().float() ** 2 if marginals[n].scale is not None
               else torch.zeros_like(loc[n])) for n in _HEAD}
    return HeadGaussian(loc, var)


def logit_moments(model: Any, weights: dict, features: torch.Tensor, batch: dict, head: HeadGaussian
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the head's outputs under ``head`` (the other weights fixed at ``weights``).

    Both come from the model's own (linear) ``outputs``: the mean at the head's means, the variance as the
    part of ``outputs`` that is linear in the head, evaluated at the variances on the squared features."""
    mean = model.outputs({**weights, **head.loc}, features, batch)
    zero = {n: torch.zeros_like(v) for n, v in head.var.items()}
    squared = features ** 2
    high = model.outputs({**weights, **head.var}, squared, batch)
    low = model.outputs({**weights, **zero}, squared, batch)
    if isinstance(mean, tuple):  # a regression head: (mean, noise), both in the targets' units
        scale = float(getattr(model, "target_scale", 1.0))
        return mean[0], (high[0] - low[0]) * scale
    return mean, torch.nan_to_num(high - low, nan=0.0).clamp_min(0.0)  # -inf - -inf on hidden choices


def probit_probs(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``E[softmax(z)]`` for ``z ~ N(mean, diag(var))`` by the probit approximation."""
    return (mean / torch.sqrt(1.0 + math.pi / 8.0 * var)).softmax(-1)


def bridge_mutual_information(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Mutual information of the Laplace bridge's Dirichlet over the class probabilities (nats, per row)."""
    classes = mean.shape[-1]
    finite = torch.isfinite(mean)
    mean = torch.where(finite, mean - mean.masked_fill(~finite, 0).sum(-1, keepdim=True) / finite.sum(-1, keepdim=True),
                       mean)
    exp_sum = torch.where(finite, torch.exp(-mean), torch.zeros_like(mean)).sum(-1, keepdim=True)
    alpha = (1 - 2 / classes + torch.exp(mean) * exp_sum / classes ** 2) / var.clamp_min(1e-12)
    alpha = torch.where(finite, alpha.clamp_min(1e-6), torch.full_like(alpha, 1e-6))
    total = alpha.sum(-1)
    p = alpha / total.unsqueeze(-1)
    expected = torch.digamma(total + 1) - (p * torch.digamma(alpha + 1)).sum(-1)
    return (_entropy(p) - expected).clamp_min(0.0)


@torch.no_grad()
def closed_form_predict(posterior: Any, data: Iterable, *, head: HeadGaussian | None = None) -> ClassPrediction:
    """Class predictions with uncertainty in one forward per batch (see the module docstring). ``head``:
    the head's Gaussian (default: the run's own, :func:`head_gaussian`)."""
    model = posterior.model
    if not model.predicts_classes:
        raise ValueError("closed_form_predict is for classifiers; a regression head's predictive is Gaussian: "
                         "use logit_moments")
    head = head if head is not None else head_gaussian(posterior)
    weights = posterior.mean()  # one forward per batch at the mean PEFT weights
    probs, mutual, labels = [], [], []
    for item in data:
        inputs, y = _split(item)
        features = model.features(weights, inputs)
        mean, var = logit_moments(model, weights, features, inputs, head)
        probs.append(probit_probs(mean, var).cpu())
        mutual.append(bridge_mutual_information(mean, var).cpu())
        if y is not None:
            labels.append(y)
    p, mi = torch.cat(probs), torch.cat(mutual)
    predictive = _entropy(p)
    return ClassPrediction(p, predictive, (predictive - mi).clamp_min(0.0), mi, torch.cat(labels) if labels else None,
                           0)


@torch.no_grad()
def last_layer_laplace(posterior: Any, data: Iterable, *, prior_precision: float | str = 1.0,
                       num_data: int | None = None) -> HeadGaussian:
    """A diagonal Laplace approximation of the head's posterior around a point estimate's head: precision
    ``prior_precision + sum_n p_nc (1 - p_nc) f_nj^2`` (the generalised Gauss-Newton diagonal of the softmax
    likelihood), summed over ``data`` (training batches) and scaled to ``num_data`` examples when given.
    ``prior_precision="marglik"``: the precision that maximises the Laplace evidence of the training data
    (:func:`evidence_precision`), so no held-out split is spent on it."""
    model = posterior.model
    if not model.predicts_classes or not (prior_precision == "marglik" or
                                          (not isinstance(prior_precision, str) and prior_precision > 0)):
        raise ValueError("last_layer_laplace needs a classifier and prior_precision > 0 or 'marglik'")
    base = head_gaussian(posterior)
    curvature = {n: torch.zeros_like(v) for n, v in base.loc.items()}
    seen, weights = 0, posterior.mean()
    for item in data:
        inputs, _ = _split(item)
        features = model.features(weights, inputs)
        p = model.outputs(weights, features, inputs).softmax(-1).float()  # (rows, C) or per choice
        g = torch.nan_to_num(p * (1 - p))
        if g.shape[-1] != curvature["head.bias"].shape[0]:  # one score per choice: (batch, choices) -> rows
            g = g.reshape(-1, 1)
        curvature["head.weight"] += g.T @ features.float() ** 2
        curvature["head.bias"] += g.sum(0)
        seen += next(iter(inputs.values())).shape[0]
    factor = (num_data / seen) if num_data else 1.0
    curvature = {n: factor * c for n, c in curvature.items()}
    if prior_precision == "marglik":
        prior_precision = evidence_precision(base.loc, curvature)
    var = {n: 1.0 / (prior_precision + c) for n, c in curvature.items()}
    return HeadGaussian(base.loc, var, float(prior_precision))


def evidence_precision(loc: dict[str, torch.Tensor], curvature: dict[str, torch.Tensor], *, iterations: int = 100,
                       bounds: tuple[float, float] = (1e-4, 1e4)) -> float:
    """The prior precision ``a`` of an isotropic Gaussian prior N(0, 1/a) that maximises the Laplace evidence
    around the point ``loc`` with diagonal curvature ``h``: MacKay's fixed point ``a = gamma / |loc|^2``,
    ``gamma = sum_j h_j / (a + h_j)`` (the well-determined parameters), iterated from ``a = 1`` and kept
    within ``bounds``. With ``h`` much larger than ``a`` it is ``P / |loc|^2``; with no curvature it falls
    to the lower bound (the data say nothing, so the prior is as wide as allowed)."""
    theta2 = float(sum(v.double().pow(2).sum() for v in loc.values()))
    h = torch.cat([c.double().reshape(-1) for c in curvature.values()])
    low, high = bounds
    a = 1.0
    for _ in range(iterations):
        gamma = float((h / (a + h)).sum())
        new = min(max(gamma / max(theta2, 1e-300), low), high)
        if abs(new - a) <= 1e-10 * a:
            break
        a = new
    return float(a)
