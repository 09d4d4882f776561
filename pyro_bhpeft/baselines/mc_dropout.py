"""MC dropout: a point estimate trained with the backbone's dropout on (``Recipe(dropout=True)``), predicted
by averaging ``K`` passes with dropout still on (Gal and Ghahramani, 2016)."""

from __future__ import annotations

from typing import Iterable

import torch

from ..backbone import dropout_active
from ..posterior import Posterior
from ..predict import ClassPrediction, class_prediction
from ._common import classification_only

__all__ = ["mc_dropout_predict"]


@torch.no_grad()
def mc_dropout_predict(posterior: Posterior, data: Iterable, *, num_samples: int, seed: int = 0) -> ClassPrediction:
    """``num_samples`` forward passes of the posterior mean with the backbone's dropout on, averaged."""
    if num_samples < 1:
        raise ValueError(f"MC dropout needs num_samples >= 1, got {num_samples}")
    model = posterior.model
    classification_only(model, "MC dropout")
    weights = posterior.mean()
    torch.manual_seed(seed)
    probs, labels = [], []
    with dropout_active(model):
        for inputs, y in data:
            probs.append(torch.stack([model.run(weights, inputs).softmax(-1) for _ in range(num_samples)]))
            labels.append(y)
    return class_prediction(torch.cat(probs, dim=1), torch.cat(labels))
