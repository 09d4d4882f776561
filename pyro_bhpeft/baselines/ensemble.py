"""A deep ensemble: the average of independently seeded point estimates (Lakshminarayanan et al., 2017);
its mutual information is the members' disagreement."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..posterior import Posterior
from ..predict import ClassPrediction, RegressionPrediction, class_prediction, predict

__all__ = ["ensemble_predict"]


def ensemble_predict(members: Sequence[Posterior], data: Iterable) -> ClassPrediction | RegressionPrediction:
    """The average predictive of point-estimate ``members`` (each predicts once with its mean). Regression:
    the mixture of the members' Gaussians, its variance the members' mean noise variance (aleatoric) plus the
    variance of their means (epistemic)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    preds = [predict(m, data, num_samples=0) for m in members]
    if isinstance(preds[0], RegressionPrediction):
        means = torch.stack([p.mean for p in preds])
        aleatoric, epistemic = torch.stack([p.variance for p in preds]).mean(0), means.var(0, unbiased=False)
        return RegressionPrediction(means.mean(0), aleatoric + epistemic, aleatoric, epistemic, preds[0].labels,
                                    len(preds))
    return class_prediction(torch.stack([p.probs for p in preds]), preds[0].labels)
