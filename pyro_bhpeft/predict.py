"""Predictions with uncertainty from a fitted posterior.

For classification, with ``K`` joint weight draws ``w_k ~ q``::

    p(y|x)      = 1/K sum_k softmax(f(x; w_k))                 predictive probabilities
    H[p(y|x)]   = predictive entropy  = expected entropy + mutual information
    E_k H[p_k]  = expected (aleatoric) entropy;  MI = their difference (epistemic)

``num_samples=0`` predicts once with the posterior mean (MI is then 0). For regression the
predictive mean and variance decompose into aleatoric (noise) and epistemic (spread of means).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from tqdm.auto import tqdm

from .posterior import Posterior

__all__ = ["predict", "class_prediction", "ClassPrediction", "RegressionPrediction"]


@dataclass(frozen=True)
class ClassPrediction:
    """Per-example predictive probabilities (N, C) and uncertainties (N,) in nats."""

    probs: torch.Tensor
    predictive_entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor
    labels: torch.Tensor | None
    num_samples: int
    sample_probs: torch.Tensor | None = None  # (K, N, C) when kept

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(-1)


@dataclass(frozen=True)
class RegressionPrediction:
    """Predictive mean and variance (N,), with variance = aleatoric + epistemic."""

    mean: torch.Tensor
    variance: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    labels: torch.Tensor | None
    num_samples: int


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def _split(item) -> tuple[dict, torch.Tensor | None]:
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


@torch.no_grad()
def predict(posterior: Posterior, data: Iterable, *, num_samples: int = 16, seed: int = 0,
            keep_samples: bool = False, progress: bool = False) -> ClassPrediction | RegressionPrediction:
    """Predict every batch of ``data`` (``inputs`` or ``(inputs, labels)``) under ``num_samples`` draws.

    The same draws are used for every batch, so per-example quantities are from one posterior sample set.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0 (0 = posterior mean only), got {num_samples}")
    from pyro.infer.autoguide import AutoDelta

    model = posterior.model
    point_mass = isinstance(posterior.guide, AutoDelta)  # every draw would be the same: predict once
    draws = [posterior.mean()] if num_samples == 0 or point_mass else posterior.sample(num_samples, seed=seed)
    outs, labels = [], []
    for item in tqdm(data, desc="predict", disable=not progress, unit="batch"):
        inputs, y = _split(item)
        outs.append([model.run(w, inputs) for w in draws])
        if y is not None:
            labels.append(y)
    y = torch.cat(labels) if labels else None
    if model.task == "regression":
        means = torch.cat([torch.stack([o[0] for o in batch]) for batch in outs], dim=1)  # (K, N)
        noise = torch.cat([torch.stack([o[1].expand_as(o[0]) for o in batch]) for batch in outs], dim=1)
        aleatoric, epistemic = (noise ** 2).mean(0), means.var(0, unbiased=False)
        return RegressionPrediction(means.mean(0), aleatoric + epistemic, aleatoric, epistemic, y, num_samples)
    probs = torch.cat([torch.stack([o.softmax(-1) for o in batch]) for batch in outs], dim=1)  # (K, N, C)
    return class_prediction(probs, y, num_samples=num_samples, keep_samples=keep_samples)


def class_prediction(sample_probs: torch.Tensor, labels: torch.Tensor | None, *, num_samples: int | None = None,
                     keep_samples: bool = False) -> ClassPrediction:
    """The predictive of ``K`` probability vectors per example, ``sample_probs`` (K, N, C): their mean,
    with predictive entropy = expected entropy + mutual information. Ensembles and MC dropout use it too.
    """
    if sample_probs.dim() != 3:
        raise ValueError(f"sample_probs must be (K, N, C), got shape {tuple(sample_probs.shape)}")
    mean = sample_probs.mean(0)
    predictive, expected = _entropy(mean), _entropy(sample_probs).mean(0)
    k = sample_probs.shape[0] if num_samples is None else num_samples
    return ClassPrediction(mean, predictive, expected, (predictive - expected).clamp_min(0.0), labels, k,
                           sample_probs if keep_samples else None)
