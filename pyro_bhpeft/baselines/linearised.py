"""The linearised (GLM) predictive of a diagonal Gaussian posterior such as a Laplace fit: logits Gaussian
under the network linearised at the mean (Immer et al. 2021, the predictive that suits a GGN Laplace)."""

from __future__ import annotations

from typing import Iterable

import torch

from pyro_bhpeft.guides import is_factorised

from ..posterior import Posterior
from ..predict import ClassPrediction, class_prediction
from ._common import classification_only, example_jacobians, psd_sqrt

__all__ = ["linearised_predict"]


def linearised_predict(posterior: Posterior, data: Iterable, *, num_samples: int, seed: int = 0,
                       progress: bool = False) -> ClassPrediction:
    """The linearised (GLM) predictive of a Gaussian posterior with diagonal covariance, e.g. a Laplace fit.

    Linearising the network at the mean ``mu``, the logits are Gaussian: ``f ~ N(f(x; mu), J S J^T)`` with
    ``S`` the diagonal posterior covariance and ``J`` the Jacobian of the logits (one backward pass per
    class and example). ``num_samples`` logit draws per example are pushed through the softmax (Immer
    et al. 2021: the predictive that suits a GGN Laplace, unlike sampling the weights).
    """
    model = posterior.model
    classification_only(model, "the linearised predictive")
    if not is_factorised(posterior.guide):
        raise ValueError(f"the linearised predictive needs a diagonal Gaussian posterior (MeanField, e.g. a "
                         f"Laplace fit), got {type(posterior.guide).__name__}")
    if num_samples < 1:
        raise ValueError(f"the linearised predictive needs num_samples >= 1, got {num_samples}")
    marginals = posterior.marginals()
    weights = {n: m.loc for n, m in marginals.items()}
    variances = [torch.zeros_like(m.loc) if m.scale is None else m.scale.square() for m in marginals.values()]  # None: point mass
    generator = torch.Generator().manual_seed(seed)
    probs, labels = [], []
    for logits, label, grads in example_jacobians(model, weights, data, None, "linearised predictive", progress):
        finite = [c for c, g in enumerate(grads) if g is not None]
        jac = torch.stack([torch.cat([(g if g is not None else torch.zeros_like(v)).flatten()
                                      for g, v in zip(grads[c], variances)]) for c in finite])
        cov = (jac * torch.cat([v.flatten() for v in variances])) @ jac.T
        noise = torch.randn(num_samples, len(finite), generator=generator, dtype=cov.dtype)
        draws = logits.expand(num_samples, -1).clone()
        draws[:, finite] += noise @ psd_sqrt(cov).T
        probs.append(draws.softmax(-1))
        labels.append(label)
    if not probs:
        raise ValueError("the linearised predictive needs at least one example; the data is empty")
    return class_prediction(torch.stack(probs, dim=1), torch.stack(labels))
