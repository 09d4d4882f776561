"""Temperature scaling (Guo et al., 2017): one temperature ``T``, fitted by NLL on a validation split,
re-tempers a predictive as ``softmax(log p / T)``. Its regression counterpart (variance scaling, Levi et al.
2019): one factor ``s`` on the predictive variance, fitted by Gaussian NLL on the validation split."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..predict import ClassPrediction, RegressionPrediction, class_prediction

__all__ = ["fit_temperature", "tempered", "MAX_TEMPERATURE", "fit_variance_scale", "variance_scaled"]

# A model no better than chance on validation has its NLL minimum at T -> infinity (the uniform answer). Past
# about 1e4 the tempered float32 probabilities of close classes round to the same value and the argmax turns
# into a tie, so temperature scaling would change predictions; bounded here, where the predictive is uniform
# to within 1 % of log-probability and every ordering is kept. The NLL is convex in 1/T, so the bounded
# optimum is the unbounded one clipped.
MAX_TEMPERATURE = 100.0


def _logits(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp_min(1e-12).log()  # log-probabilities: logits up to a per-row constant


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(log probs / T)`` on held-out examples."""
    if len(labels) == 0:
        raise ValueError("temperature scaling needs labelled validation examples; the split is empty")
    logits, labels = _logits(probs.detach().double()), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return min(float(log_t.detach().exp()), MAX_TEMPERATURE)


def tempered(pred: ClassPrediction, temperature: float) -> ClassPrediction:
    """``pred`` with its probabilities re-tempered: ``softmax(log p / T)``."""
    return class_prediction((_logits(pred.probs) / temperature).softmax(-1)[None], pred.labels, num_samples=0)


def fit_variance_scale(pred: RegressionPrediction) -> float:
    """The factor ``s`` minimising the Gaussian NLL of ``N(mean, s * variance)`` on labelled held-out
    predictions: in closed form, ``s = mean((y - mean)^2 / variance)``."""
    if pred.labels is None or len(pred.labels) == 0:
        raise ValueError("variance scaling needs labelled validation examples; the split is empty")
    residual = (pred.labels.double() - pred.mean.double()) ** 2
    return float((residual / pred.variance.double().clamp_min(1e-12)).mean())


def variance_scaled(pred: RegressionPrediction, scale: float) -> RegressionPrediction:
    """``pred`` with its variance (both parts) multiplied by ``scale``; the mean is unchanged."""
    return RegressionPrediction(pred.mean, pred.variance * scale, pred.aleatoric * scale, pred.epistemic * scale,
                                pred.labels, pred.num_samples)
