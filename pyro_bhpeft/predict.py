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
from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .posterior import Posterior

__all__ = ["predict", "class_prediction", "concat_predictions", "prediction_rows", "ClassPrediction",
           "RegressionPrediction", "DEFAULT_SAMPLES"]

DEFAULT_SAMPLES = 8  # posterior draws K per prediction: the value every committed result (demo, compare) used


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


def _cpu(out: Any) -> Any:
    """Model outputs (a tensor, or a tuple of them) on the CPU, where predictions are gathered."""
    return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()


def _split(item) -> tuple[dict, torch.Tensor | None]:
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


@torch.no_grad()
def predict(posterior: Posterior, data: Iterable, *, num_samples: int = DEFAULT_SAMPLES, seed: int = 0,
            keep_samples: bool = False, progress: bool = False, max_rows: int | None = None
            ) -> ClassPrediction | RegressionPrediction:
    """Predict every batch of ``data`` (``inputs`` or ``(inputs, labels)``) under ``num_samples`` draws.

    The same draws are used for every batch, so per-example quantities are from one posterior sample set.
    The draws are folded into the batch, as many per backbone forward as fit in ``max_rows`` rows (None: the
    device's default; see :meth:`~pyro_bhpeft.models.BayesianPeftModel.run_samples`); ``max_rows=1`` runs one
    forward per draw.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0 (0 = posterior mean only), got {num_samples}")
    from pyro_bhpeft.guides import is_point_mass

    model = posterior.model
    point_mass = is_point_mass(posterior.guide)  # every draw would be the same: predict once
    draws = [posterior.mean()] if num_samples == 0 or point_mass else posterior.sample(num_samples, seed=seed)
    outs, labels = [], []
    for item in tqdm(data, desc="predict", disable=not progress, unit="batch"):
        inputs, y = _split(item)
        outs.append([_cpu(o) for o in model.run_samples(draws, inputs, max_rows=max_rows)])
        if y is not None:
            labels.append(y)
    y = torch.cat(labels) if labels else None
    if not model.predicts_classes:
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


def concat_predictions(parts: Sequence[ClassPrediction]) -> ClassPrediction:
    """One :class:`ClassPrediction` from per-batch ones (same classes and sample count), in order."""
    if not parts:
        raise ValueError("concat_predictions needs at least one prediction")
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    labels = None if parts[0].labels is None else cat("labels")
    samples = None if parts[0].sample_probs is None else torch.cat([p.sample_probs for p in parts], dim=1)
    return ClassPrediction(cat("probs"), cat("predictive_entropy"), cat("expected_entropy"),
                           cat("mutual_information"), labels, parts[0].num_samples, samples)


def prediction_rows(pred: ClassPrediction | RegressionPrediction, texts: Sequence[str],
                    label_names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One JSON-able row per example: its text and label, then the prediction with its uncertainty.

    Classification: ``predicted`` (and ``predicted_name`` when ``label_names`` covers every class),
    ``confidence``, ``entropy``, ``mutual_information`` and ``p_0 .. p_{C-1}``; regression: ``mean``,
    ``std`` (of the predictive) and ``epistemic_var``.
    """
    if isinstance(pred, RegressionPrediction):
        labels = pred.labels if pred.labels is not None else [None] * len(texts)  # texts alone: no label
        return [{"text": t, "label": _value(y), "mean": float(m), "std": float(v) ** 0.5, "epistemic_var": float(e)}
                for t, y, m, v, e in zip(texts, labels, pred.mean, pred.variance, pred.epistemic)]
    classes = pred.probs.shape[1]
    names = list(label_names) or [str(i) for i in range(classes)]
    rows = []
    for i, t in enumerate(texts):
        predicted = int(pred.predicted[i])
        label = int(pred.labels[i]) if pred.labels is not None else -1
        row = {"text": t, "label": label if label >= 0 else None,  # -1: a row without a (known) label
               "predicted": predicted, "predicted_name": names[predicted] if len(names) == classes else None,
               "confidence": float(pred.probs[i].max()), "entropy": float(pred.predictive_entropy[i]),
               "mutual_information": float(pred.mutual_information[i])}
        row.update({f"p_{j}": float(p) for j, p in enumerate(pred.probs[i])})
        rows.append(row)
    return rows


def _value(y: Any) -> float | None:
    """A regression label as a float, or None for a missing one (None or NaN)."""
    if y is None:
        return None
    y = float(y)
    return None if y != y else y
