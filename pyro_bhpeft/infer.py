"""Fit the PEFT posterior by stochastic variational inference.

The loss is the negative ELBO, ``-E_q[log p(y | w)] + kl_weight * KL(q(w) || p(w))``, with the
likelihood scaled to the full data size; it is built as an ``nn.Module`` (Pyro's ``ELBO(model,
guide)``) and minimised with a plain torch optimizer over the guide's parameters only.

Example::

    result = fit(model, MeanField(model), loader, epochs=1, lr=2e-3)
    result.history[-1]          # final loss per example
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from .posterior import Posterior

__all__ = ["fit", "FitResult", "kl_schedule"]


@dataclass(frozen=True)
class FitResult:
    """What a fit produced: the posterior and its training curve (loss = -ELBO per example)."""

    posterior: Posterior
    history: list[float] = field(repr=False)
    kl_weights: list[float] = field(repr=False)
    step_seconds: list[float] = field(repr=False)  # wall time of each optimisation step
    steps: int
    seconds: float

    @property
    def final_loss(self) -> float:
        tail = self.history[-max(1, len(self.history) // 10):]
        return sum(tail) / len(tail)


def kl_schedule(step: int, weight: float, anneal_steps: int) -> float:
    """Linear KL annealing from 0 to ``weight`` over ``anneal_steps`` steps (constant if 0)."""
    if anneal_steps <= 0:
        return weight
    return weight * min(1.0, (step + 1) / anneal_steps)


def _elbo_for(guide: Any, num_particles: int):
    from pyro_bhpeft.guides import Delta, MeanField

    # Analytic KL where every guide site is a Normal or a point mass; Monte Carlo otherwise.
    kind = TraceMeanField_ELBO if isinstance(guide, (MeanField, Delta)) else Trace_ELBO
    return kind(num_particles=num_particles, vectorize_particles=False)


def _param_groups(guide: torch.nn.Module, lr: float, scale_lr: float, weight_decay: float) -> list[dict]:
    """Posterior scales (and low-rank factors) may learn at their own rate."""
    scales, locs = [], []
    for name, p in guide.named_parameters():
        if p.requires_grad:
            (scales if ("scale" in name or "cov_factor" in name) else locs).append(p)
    groups = [{"params": locs, "lr": lr, "weight_decay": weight_decay}]
    if scales:
        groups.append({"params": scales, "lr": scale_lr, "weight_decay": 0.0})
    return groups


def _num_data(data: Iterable, num_data: int | None) -> int:
    if num_data is not None:
        return int(num_data)
    dataset = getattr(data, "dataset", None)
    if dataset is None:
        raise ValueError("fit needs num_data (the full training size) when data is not a DataLoader")
    return len(dataset)


def fit(model: Any, guide: Any, data: Iterable[tuple[dict, torch.Tensor]], *, num_data: int | None = None,
        epochs: int = 1, max_steps: int | None = None, lr: float = 2e-3, scale_lr: float | None = None,
        final_lr_factor: float = 1.0,
        weight_decay: float = 0.0, kl_weight: float = 1.0, kl_anneal_steps: int = 0, clip_norm: float | None = 1.0,
        num_particles: int = 1, seed: int = 0, progress: bool = True, backbone_name: str | None = None,
        meta: dict | None = None) -> FitResult:
    """Run SVI over ``epochs`` passes of ``data`` (batches of ``(inputs, labels)``).

    ``scale_lr`` is the learning rate of the posterior scales (default: ``lr``); every learning rate
    decays exponentially to ``final_lr_factor`` times its start by the last step; ``kl_weight``
    multiplies the KL term (1 = the true ELBO) and can be annealed in over ``kl_anneal_steps``.
    The same ``seed`` gives the same posterior.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs} (max_steps only caps the steps of those epochs)")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 when given, got {max_steps}")
    pyro.set_rng_seed(seed)
    model.num_data = _num_data(data, num_data)
    batches = list(data) if not hasattr(data, "__len__") else data
    first = next(iter(batches))
    with torch.no_grad(), poutine.block():
        guide(*first)  # set the guide's parameters up
    optimizer = torch.optim.Adam(_param_groups(guide, lr, scale_lr or lr, weight_decay))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    total = epochs * len(batches) if max_steps is None else min(max_steps, epochs * len(batches))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: final_lr_factor ** (s / max(1, total - 1)))
    history, weights, times, start, step = [], [], [], time.perf_counter(), 0
    bar = tqdm(total=total, desc="fit", disable=not progress, unit="step", dynamic_ncols=True)
    scaled_guide = _KLScaledGuide(guide)
    loss_fn = _elbo_for(guide, num_particles)(model, scaled_guide)
    while step < total:
        for inputs, labels in batches:
            tick = time.perf_counter()
            beta = kl_schedule(step, kl_weight, kl_anneal_steps)
            model.kl_weight = scaled_guide.weight = beta
            loss = loss_fn(inputs, labels) / model.num_data
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
            schedule.step()
            times.append(time.perf_counter() - tick)
            history.append(float(loss.detach()))
            weights.append(beta)
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sum(history[-10:]) / 10:.4f}", kl_w=f"{beta:.2f}")
            if step >= total:
                break
    bar.close()
    model.kl_weight = 1.0
    posterior = Posterior(model, guide, backbone_name=backbone_name, meta=meta)
    return FitResult(posterior, history, weights, times, step, time.perf_counter() - start)


class _KLScaledGuide(torch.nn.Module):
    """The guide with its log-density scaled by the current KL weight, matching the model's prior."""

    def __init__(self, guide: torch.nn.Module) -> None:
        super().__init__()
        self.guide = guide
        self.weight = 1.0

    def forward(self, *args, **kwargs):
        from pyro_bhpeft.models.base import kl_scaled

        with kl_scaled(self.weight):
            return self.guide(*args, **kwargs)
