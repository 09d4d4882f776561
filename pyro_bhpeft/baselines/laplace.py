"""Post-hoc Laplace around a point estimate (the LoRA and head weights): a diagonal generalised Gauss-Newton
(GGN) precision plus an isotropic prior precision chosen by maximising the Laplace marginal likelihood
(MacKay 1992; Immer et al. 2021; Laplace-LoRA, Yang et al. 2024, with a diagonal instead of a
Kronecker-factored GGN).

The result is an ordinary mean-field :class:`~pyro_bhpeft.posterior.Posterior`, so it is sampled, saved and
diagnosed like any other; :func:`~pyro_bhpeft.baselines.linearised_predict` gives its linearised predictive.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from pyro_bhpeft.guides import MeanField

from ..posterior import Posterior
from ..priors import Normal
from ._common import classification_only, example_jacobians

__all__ = ["ggn_diagonal", "laplace_posterior", "LaplaceFit"]


def ggn_diagonal(model: Any, weights: dict[str, torch.Tensor], data: Iterable, *, max_examples: int,
                 progress: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    """Sum over examples of the diagonal GGN of the negative log-likelihood at ``weights``.

    For a softmax likelihood with logits ``f`` and probabilities ``p``, the GGN is ``J^T (diag p - p p^T) J``;
    its diagonal is ``sum_c p_c J_c^2 - (sum_c p_c J_c)^2``, computed exactly from one backward pass per
    class and example. Uses the first ``max_examples`` examples of ``data``; returns (diagonal, count).
    """
    classification_only(model, "the GGN")
    diag = {n: torch.zeros_like(w) for n, w in weights.items()}
    seen = 0
    for logits, _, grads in example_jacobians(model, weights, data, max_examples, "laplace GGN", progress):
        p = logits.softmax(-1)
        first = {n: torch.zeros_like(d) for n, d in diag.items()}  # sum_c p_c J_c
        for c, per_weight in enumerate(grads):
            if per_weight is None or p[c] == 0:
                continue
            for name, g in zip(diag, per_weight):
                if g is not None:
                    diag[name] += p[c] * g.square()
                    first[name] += p[c] * g
        for name in diag:
            diag[name] -= first[name].square()
        seen += 1
    if seen == 0:
        raise ValueError("the GGN needs at least one example; the data is empty")
    return {n: d.clamp_min(0.0) for n, d in diag.items()}, seen


def _log_marginal_likelihood(precision: float, ggn: torch.Tensor, sq_norm: float) -> float:
    """The terms of the diagonal Laplace log evidence that depend on the prior precision ``precision``."""
    count = ggn.numel()
    return float(-0.5 * precision * sq_norm + 0.5 * count * math.log(precision)
                 - 0.5 * torch.log(ggn + precision).sum())


@dataclass(frozen=True)
class LaplaceFit:
    """A Laplace posterior, the prior precision it chose, and the evidence over the searched grid."""

    posterior: Posterior
    prior_precision: float
    grid: list[float]
    log_evidence: list[float]
    examples: int
    seconds: float


def laplace_posterior(posterior: Posterior, data: Iterable, *, num_data: int, max_examples: int = 256,
                      grid: Sequence[float] | None = None, progress: bool = False) -> LaplaceFit:
    """Post-hoc diagonal Laplace around the point estimate ``posterior.mean()`` (every site).

    The GGN diagonal is summed over the first ``max_examples`` examples of ``data`` and scaled to
    ``num_data``; the prior ``N(0, 1/lambda)`` takes the ``lambda`` in ``grid`` (default ``10^-4..10^6``)
    that maximises the Laplace evidence. The returned posterior is ``N(w*, (GGN + lambda)^-1)`` per
    weight, on the same model, with that prior recorded as the model's prior.
    """
    start = time.perf_counter()
    model = posterior.model
    center = posterior.mean()
    ggn, seen = ggn_diagonal(model, center, data, max_examples=max_examples, progress=progress)
    scale = num_data / seen
    flat = torch.cat([g.flatten() for g in ggn.values()]) * scale
    sq_norm = float(sum(c.square().sum() for c in center.values()))
    grid = list(grid) if grid is not None else [10.0 ** e for e in torch.linspace(-4, 6, 41).tolist()]
    evidence = [_log_marginal_likelihood(lam, flat, sq_norm) for lam in grid]
    best = grid[max(range(len(grid)), key=evidence.__getitem__)]
    scales = {n: (g * scale + best).rsqrt() for n, g in ggn.items()}
    model.prior = Normal(scale=best ** -0.5)
    guide = MeanField.from_marginals(model, center, scales)
    meta = {**posterior.meta, "laplace": {"prior_precision": best, "examples": seen, "num_data": num_data}}
    result = Posterior(model, guide, backbone_name=posterior.backbone_name, meta=meta)
    return LaplaceFit(result, best, grid, evidence, seen, time.perf_counter() - start)
