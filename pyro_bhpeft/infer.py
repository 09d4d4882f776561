"""Fit the PEFT posterior by stochastic variational inference.

The loss is the negative ELBO per example, ``-E_q[log p(y | w)] / N + kl_weight * KL(q(w) || p(w)) / N``,
with the likelihood scaled to the full data size ``N``; it is Pyro's ``ELBO(model, guide)`` as an
``nn.Module``, minimised with a plain torch optimizer over the guide's parameters only. The two
terms are recorded separately (``FitResult.nll``, ``FitResult.kl``), and so is every site's mean
posterior scale over the steps, so a user sees whether the data was fitted and the posterior moved.

Two ways to take a step:

* **joint** (default): one Adam step on the whole loss; posterior scales may have their own
  learning rate ``scale_lr``.
* **split** (``kl_step=KLStep(...)``, BLoB's scheme, Wang et al. 2024): an Adam step on the
  likelihood term, then a plain SGD step of rate ``kl_step.lr`` on ``pi_t * KL``, with BLoB's
  re-weighting ``pi_i = 2^i / (2^(M+1) - 1)`` over the ``M`` steps of an epoch (or ``1 / M``).

Example::

    result = fit(model, MeanField(model), loader, epochs=1, lr=2e-3, scale_lr=0.05)
    result.nll[-1], result.kl[-1]       # the two terms of the final loss, per example
    result.warnings                     # e.g. "posterior scales never left their start ..."

The options live in one dataclass, :class:`FitOptions`; the loop is :class:`~pyro_bhpeft.trainer.Trainer`
(a step function and callbacks: progress, checkpoints, data parallelism).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import pyro
import torch

from .checkpoint import Checkpoint
from .posterior import Posterior

__all__ = ["fit", "FitOptions", "FitResult", "KLStep", "kl_schedule", "blob_kl_weight", "scale_warnings", "lr_factor"]


@dataclass(frozen=True)
class KLStep:
    """BLoB's separate KL step: SGD at rate ``lr`` on ``pi_t * KL``; ``schedule`` ``blob`` re-weights the
    steps of each epoch by ``2^i / (2^(M+1) - 1)``, ``uniform`` gives each ``1 / M``.

    ``M`` is the number of steps of an epoch. (BLoB's code cycles over ``M = int(100 N^(pi/gamma) / batch)``
    steps with ``gamma = 8``, independent of the epochs: 94 steps for 1,000 examples in batches of 16, where
    an epoch here is 63, so its KL weighs about 2/3 of ours over the same steps.) The reported loss is
    ``NLL + KL`` per example; what the two steps follow per epoch is ``M * mean NLL + KL``, the KL weighted
    ``batch`` times more than in the ELBO, as in BLoB.
    """

    lr: float = 0.02
    schedule: str = "blob"

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.schedule not in ("blob", "uniform"):
            raise ValueError(f"KLStep needs lr > 0 and schedule 'blob' or 'uniform', got {self.lr}, {self.schedule!r}")


@dataclass(frozen=True)
class FitOptions:
    """Everything :func:`fit` takes besides the model, guide and data, with its defaults.

    ``scale_lr`` is the learning rate of the posterior scales (default: ``lr``); ``site_lr`` maps glob patterns
    of site names to the learning rate of their locations (e.g. ``{"*.rank_gate": 0.05}``); every learning rate
    warms up over the first ``warmup_ratio`` of the steps, then decays exponentially to ``final_lr_factor``
    times its start by the last step, or with ``lr_decay="linear"`` linearly to 0 (:func:`lr_factor`);
    ``kl_weight`` multiplies the KL term (1 = the true ELBO) and can be annealed in over ``kl_anneal_steps``;
    ``kl_step`` switches to BLoB's split step; ``flipout`` (mean-field guides) decorrelates the LoRA ``A``
    noise across the examples of a batch. The same ``seed`` gives the same posterior. ``checkpoint``: a
    :class:`~pyro_bhpeft.checkpoint.Checkpoint`.
    """

    num_data: int | None = None
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 2e-3
    scale_lr: float | None = None
    final_lr_factor: float = 1.0
    weight_decay: float = 0.0
    kl_weight: float = 1.0
    kl_anneal_steps: int = 0
    kl_step: KLStep | None = None
    flipout: bool = False
    warmup_ratio: float = 0.0
    lr_decay: str = "none"
    site_lr: Mapping[str, float] | None = None
    clip_norm: float | None = 1.0
    num_particles: int = 1
    seed: int = 0
    progress: bool = True
    backbone_name: str | None = None
    meta: dict | None = None
    checkpoint: Checkpoint | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs} (max_steps only caps the steps of those epochs)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 when given, got {self.max_steps}")


@dataclass(frozen=True)
class FitResult:
    """What a fit produced: the posterior and its training curves (per example, one entry per step)."""

    posterior: Posterior
    history: list[float] = field(repr=False)  # loss = NLL + kl_weight * KL
    kl_weights: list[float] = field(repr=False)
    step_seconds: list[float] = field(repr=False)  # wall time of each optimisation step
    steps: int
    seconds: float
    nll: list[float] = field(default_factory=list, repr=False)  # -log p(y | w) / N, one weight draw
    kl: list[float] = field(default_factory=list, repr=False)  # KL(q || p) / N (nan where it was not computed)
    scale_steps: list[int] = field(default_factory=list, repr=False)  # steps at which scales were recorded
    scale_trace: dict[str, list[float]] = field(default_factory=dict, repr=False)  # site -> mean scale
    warnings: list[str] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return tail_mean(self.history)

    @property
    def final_nll(self) -> float:
        return tail_mean(self.nll)

    @property
    def final_kl(self) -> float:
        return tail_mean(self.kl)

    def summary(self) -> str:
        """One line: steps, time, and the final NLL and KL per example."""
        kl = "" if math.isnan(self.final_kl) else f", KL/N {self.final_kl:.4f}"
        return f"{self.steps} steps in {self.seconds:.0f} s: NLL {self.final_nll:.4f}{kl} per example"


def tail_mean(values: list[float], n: int | None = None) -> float:
    """Mean of the last ``n`` values (default: the last tenth)."""
    tail = values[-(n or max(1, len(values) // 10)):]
    return sum(tail) / len(tail) if tail else float("nan")


def kl_schedule(step: int, weight: float, anneal_steps: int) -> float:
    """Linear KL annealing from 0 to ``weight`` over ``anneal_steps`` steps (constant if 0)."""
    if anneal_steps <= 0:
        return weight
    return weight * min(1.0, (step + 1) / anneal_steps)


def blob_kl_weight(step: int, steps_per_epoch: int) -> float:
    """BLoB's ``pi_i = 2^i / (2^(M+1) - 1)``, ``i = 1..M`` cycling over each epoch's ``M`` steps (0-based
    ``step``); the weights of one epoch sum to ``1 - 1 / (2^(M+1) - 1)``. Computed in log space."""
    m = steps_per_epoch
    i = (step % m) + 1
    return math.exp((i - m - 1) * math.log(2.0)) / (1.0 - 2.0 ** -(m + 1))


def scale_warnings(steps: list[int], trace: dict[str, list[float]]) -> list[str]:
    """One line per problem with the posterior scales: they never left their start (median change
    under 25 %), or they were still moving at the end (median change over 10 % in the last fifth)."""
    if not trace or len(steps) < 3:
        return []
    late = next(i for i, s in enumerate(steps) if s >= 0.8 * steps[-1])
    moves = [math.log(v[-1] / v[0]) for v in trace.values()]  # each site's log change over the fit
    total = statistics.median(abs(m) for m in moves)
    recent = statistics.median(abs(math.log(v[-1] / v[late])) for v in trace.values())
    out = []
    if total < math.log(1.25):
        out.append(f"posterior scales never left their start (median change {math.exp(total) - 1:.0%} over "
                   f"{steps[-1]} steps): the fit did not reach the posterior; raise scale_lr or the steps")
    elif recent > math.log(1.10):
        out.append(f"posterior scales were still moving at the end ({math.exp(recent) - 1:.0%} in the last "
                   "fifth of the steps): give the fit more steps or a larger scale_lr")
    lockstep = _lockstep(moves)
    if out and lockstep is not None:
        out[0] += (f"; the sites' scales {'grew' if lockstep > 1 else 'shrank'} alike ({lockstep:.2f}x), as steps "
                   "capped by the learning rate do: scale_lr, not the data, held them")
    return out


def _lockstep(logs: list[float]) -> float | None:
    """The median factor by which the sites' scales moved when they moved alike: all one way, and at least 80 %
    of them within 10 % of the largest move. Adam's steps are about the learning rate whatever the gradient's
    size, so a learning rate too small for the distance moves every site by the same factor. Else None.
    ``logs``: each site's log change over the fit."""
    if len(logs) < 2 or not (all(x > 0 for x in logs) or all(x < 0 for x in logs)):
        return None
    largest = max(map(abs, logs))
    alike = sum(abs(x) >= largest - math.log(1.10) for x in logs) / len(logs)
    return math.exp(statistics.median(logs)) if alike >= 0.8 else None


def lr_factor(step: int, total: int, final_factor: float = 1.0, warmup_ratio: float = 0.0,
              decay: str = "none") -> float:
    """The learning-rate multiplier at ``step`` (0-based) of ``total``: a linear warm-up over the first
    ``warmup_ratio`` of the steps (step ``s`` at ``(s + 1) / warm``), then ``decay``: ``"linear"`` to 0 at
    ``total`` (as Hugging Face's linear schedule), or ``"none"``: exponential to ``final_factor`` at the last
    step (1.0: constant)."""
    warm = int(round(warmup_ratio * total))
    if step < warm:
        return (step + 1) / warm
    if decay == "linear":
        return max(0.0, (total - step) / max(1, total - warm))
    return final_factor ** (step / max(1, total - 1))


def check_priors(model: Any, guide: Any) -> None:
    """One line instead of an unbounded objective: a random site under a flat prior, or learned prior scales
    under a point mass (joint MAP over weights and prior scales has no maximum)."""
    from pyro_bhpeft.guides import is_factorised, is_point_mass

    prior, sites = getattr(model, "prior", None), getattr(model, "sites", {})
    if prior is not None and prior.parameters() and is_point_mass(guide):
        raise ValueError("learned prior scales need a posterior with variance (e.g. --guide mean-field): with a "
                         "point mass the prior scale of a zero-initialised weight runs to 0")
    if not is_factorised(guide) or prior is None:  # per-site marginals: a flat prior on a random site is unbounded
        return
    joint = set(getattr(prior, "joint", ()))
    site_prior = getattr(model, "site_prior", lambda n: sites[n].prior or prior)
    for name, (_, scale) in guide.marginals().items():
        if name in sites and name not in joint and scale is not None and isinstance(
                site_prior(name).distribution(name, sites[name].shape), pyro.distributions.ImproperUniform):
            raise ValueError(f"site {name!r} has no prior (flat) but a random posterior, so its KL is unbounded; "
                             "make it a point mass (deterministic=...) or give it a prior")


def fit(model: Any, guide: Any, data: Iterable[tuple[dict, torch.Tensor]], options: FitOptions | None = None,
        **changes: Any) -> FitResult:
    """Run SVI over ``options.epochs`` passes of ``data`` (batches of ``(inputs, labels)``); the options are a
    :class:`FitOptions`, or its fields as keywords (``fit(model, guide, loader, epochs=2, lr=1e-2)``).

    With a :class:`~pyro_bhpeft.checkpoint.Checkpoint` the fit saves its state every ``checkpoint.every``
    steps, and on Ctrl-C at the end of the current step (then raises
    :class:`~pyro_bhpeft.checkpoint.FitInterrupted`); ``checkpoint.resume`` continues from the saved step to
    the posterior an uninterrupted fit gives.
    """
    from .trainer import Trainer

    options = FitOptions(**changes) if options is None else replace(options, **changes)
    from pyro_bhpeft.guides import is_factorised

    if options.flipout and not is_factorised(guide):
        raise ValueError(f"flipout needs a mean-field guide (per-site loc and scale), not {type(guide).__name__}")
    return Trainer(model, guide, options).run(data)


def __getattr__(name: str) -> Any:
    if name == "_Steps":  # the step function's earlier name (tests patch its ``take``)
        from .trainer import Stepper

        return Stepper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
