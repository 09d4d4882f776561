"""A deep ensemble: the average of independently seeded point estimates (Lakshminarayanan et al., 2017);
its mutual information is the members' disagreement."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..posterior import Posterior
from ..predict import ClassPrediction, class_prediction, predict

__all__ = ["ensemble_predict"]


def ensemble_predict(members: Sequence[Posterior], data: Iterable) -> ClassPrediction:
    """The average predictive of point-estimate ``members`` (each predicts once with its mean)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    preds = [predict(m, data, num_samples=0) for m in members]
    return class_prediction(torch.stack([p.probs for p in preds]), preds[0].labels)
