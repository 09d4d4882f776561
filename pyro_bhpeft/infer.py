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
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from .config import ConfigError
from .checkpoint import Checkpoint, FitInterrupted, StopOnInterrupt, load_state, rng_state, save_state, set_rng_state
from .distributed import world, wrap_loss
from .posterior import Posterior

__all__ = ["fit", "FitResult", "KLStep", "kl_schedule", "blob_kl_weight", "scale_warnings", "lr_factor"]


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
        return _tail_mean(self.history)

    @property
    def final_nll(self) -> float:
        return _tail_mean(self.nll)

    @property
    def final_kl(self) -> float:
        return _tail_mean(self.kl)

    def summary(self) -> str:
        """One line: steps, time, and the final NLL and KL per example."""
        kl = "" if math.isnan(self.final_kl) else f", KL/N {self.final_kl:.4f}"
        return f"{self.steps} steps in {self.seconds:.0f} s: NLL {self.final_nll:.4f}{kl} per example"


def _tail_mean(values: list[float], n: int | None = None) -> float:
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


class _Likelihood(Messenger):
    """Records the (plate-scaled) log-likelihood of the observed sites inside the data plate."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0.0

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["is_observed"] and any(f.name == "data" for f in msg["cond_indep_stack"]):
            self.value += float(msg["fn"].log_prob(msg["value"]).detach().sum()) * float(msg["scale"])


def _param_groups(guide: torch.nn.Module, lr: float, scale_lr: float, weight_decay: float,
                  site_lr: Mapping[str, float] | None = None) -> list[dict]:
    """Posterior scales (and low-rank factors) may learn at their own rate, and so may the locations of the
    sites whose names match a pattern of ``site_lr`` (the first matching pattern wins)."""
    from pyro_bhpeft.guides import variance_parameters

    params = [p for p in guide.parameters() if p.requires_grad]
    ids = {id(p) for p in variance_parameters(guide)}
    own: dict[str, list] = {pattern: [] for pattern in site_lr or {}}
    for name, p in guide.named_parameters():  # locations of sites with a learning rate of their own
        site = name.removeprefix("locs.").removesuffix("_unconstrained")  # PyroParam's storage name
        pattern = next((pat for pat in own if fnmatch.fnmatchcase(site, pat)), None)
        if name.startswith("locs.") and pattern is not None and p.requires_grad:
            own[pattern].append(p)
    if any(not ps for ps in own.values()):
        raise ConfigError(f"no site of the guide matches the learning-rate pattern(s) {[k for k, v in own.items() if not v]}")
    taken = {id(p) for ps in own.values() for p in ps}
    locs = [p for p in params if id(p) not in ids and id(p) not in taken]
    scales = [p for p in params if id(p) in ids]
    groups = [{"params": locs, "lr": lr, "weight_decay": weight_decay}]
    if scales:
        groups.append({"params": scales, "lr": scale_lr, "weight_decay": 0.0})
    groups += [{"params": ps, "lr": site_lr[pat], "weight_decay": 0.0} for pat, ps in own.items()]
    return groups


def _num_data(data: Iterable, num_data: int | None) -> int:
    if num_data is not None:
        return int(num_data)
    dataset = getattr(data, "dataset", None)
    if dataset is None:
        raise ValueError("fit needs num_data (the full training size) when data is not a DataLoader")
    return len(dataset)


def _mean_scales(guide: Any) -> dict[str, float] | None:
    if not hasattr(guide, "marginals"):
        return None
    return {name: float(scale.mean()) for name, (_, scale) in guide.marginals().items() if scale is not None}


def scale_warnings(steps: list[int], trace: dict[str, list[float]]) -> list[str]:
    """One line per problem with the posterior scales: they never left their start (median change
    under 25 %), or they were still moving at the end (median change over 10 % in the last fifth)."""
    if not trace or len(steps) < 3:
        return []
    late = next(i for i, s in enumerate(steps) if s >= 0.8 * steps[-1])
    total = statistics.median(abs(math.log(v[-1] / v[0])) for v in trace.values())
    recent = statistics.median(abs(math.log(v[-1] / v[late])) for v in trace.values())
    out = []
    if total < math.log(1.25):
        out.append(f"posterior scales never left their start (median change {math.exp(total) - 1:.0%} over "
                   f"{steps[-1]} steps): the fit did not reach the posterior; raise scale_lr or the steps")
    elif recent > math.log(1.10):
        out.append(f"posterior scales were still moving at the end ({math.exp(recent) - 1:.0%} in the last "
                   "fifth of the steps): give the fit more steps or a larger scale_lr")
    return out


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


@dataclass
class _Steps:
    """The optimisers and losses of one fit, and its curves."""

    model: Any
    guide: Any
    loss_fn: Any
    scaled_guide: _KLScaledGuide
    optimizer: torch.optim.Optimizer
    schedule: Any
    params: list
    clip_norm: float | None
    kl_step: KLStep | None = None
    kl_loss: Any = None
    kl_optimizer: torch.optim.Optimizer | None = None
    kl_schedule: Any = None
    flipout: bool = False
    num_particles: int = 1

    def _nll_loss(self, inputs, labels, beta: float) -> tuple[torch.Tensor, float]:
        recorder = _Likelihood()
        self.model.kl_weight = self.scaled_guide.weight = beta
        if self.flipout:
            self.model.flipout_locs = self.guide.site_loc
        try:
            with recorder:
                loss = self.loss_fn(inputs, labels) / self.model.num_data
        finally:
            self.model.flipout_locs = None
        return loss, -recorder.value / self.num_particles / self.model.num_data

    def take(self, inputs, labels, beta: float, pi: float) -> tuple[float, float, float]:
        """One step; returns (loss, nll, kl) per example."""
        if self.kl_step is None:
            loss, nll = self._nll_loss(inputs, labels, beta)
            self._step(loss, self.optimizer, self.schedule)
            kl = (float(loss.detach()) - nll) / beta if beta > 0 else float("nan")
            return float(loss.detach()), nll, kl
        loss, nll = self._nll_loss(inputs, labels, 0.0)
        self._step(loss, self.optimizer, self.schedule)
        self.model.kl_weight = self.scaled_guide.weight = 1.0
        self.model.prior_only = True
        try:
            kl_total = self.kl_loss(inputs, labels)
        finally:
            self.model.prior_only = False
        self._step(beta * pi * kl_total, self.kl_optimizer, self.kl_schedule, clip=False)  # as BLoB: unclipped
        kl = float(kl_total.detach()) / self.model.num_data
        return nll + beta * kl, nll, kl

    def _step(self, loss: torch.Tensor, optimizer, schedule, clip: bool = True) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip and self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        optimizer.step()
        schedule.step()


def _elbo_for(guide: Any, num_particles: int):
    from pyro_bhpeft.guides import elbo_for

    return elbo_for(guide, num_particles)  # analytic KL where the guide's sites allow it; Monte Carlo otherwise


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


def _decay(optimizer: torch.optim.Optimizer, factor: float, total: int, warmup_ratio: float = 0.0,
           decay: str = "none"):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, factor, warmup_ratio, decay))


def fit(model: Any, guide: Any, data: Iterable[tuple[dict, torch.Tensor]], *, num_data: int | None = None,
        epochs: int = 1, max_steps: int | None = None, lr: float = 2e-3, scale_lr: float | None = None,
        final_lr_factor: float = 1.0, weight_decay: float = 0.0, kl_weight: float = 1.0, kl_anneal_steps: int = 0,
        kl_step: KLStep | None = None, flipout: bool = False, warmup_ratio: float = 0.0, lr_decay: str = "none",
        site_lr: Mapping[str, float] | None = None, clip_norm: float | None = 1.0,
        num_particles: int = 1, seed: int = 0, progress: bool = True, backbone_name: str | None = None,
        meta: dict | None = None, checkpoint: Checkpoint | None = None) -> FitResult:
    """Run SVI over ``epochs`` passes of ``data`` (batches of ``(inputs, labels)``).

    ``scale_lr`` is the learning rate of the posterior scales (default: ``lr``); ``site_lr`` maps glob patterns of
    site names to the learning rate of their locations (e.g. ``{"*.rank_gate": 0.05}``); every learning rate
    warms up over the first ``warmup_ratio`` of the steps, then decays exponentially to ``final_lr_factor``
    times its start by the last step, or with ``lr_decay="linear"`` linearly to 0 (:func:`lr_factor`); ``kl_weight``
    multiplies the KL term (1 = the true ELBO) and can be annealed in over ``kl_anneal_steps``;
    ``kl_step`` switches to BLoB's split step; ``flipout`` (mean-field guides) decorrelates the
    LoRA ``A`` noise across the examples of a batch. The same ``seed`` gives the same posterior.

    With a :class:`~pyro_bhpeft.checkpoint.Checkpoint` the fit saves its state every ``checkpoint.every``
    steps, and on Ctrl-C at the end of the current step (then raises
    :class:`~pyro_bhpeft.checkpoint.FitInterrupted`); ``checkpoint.resume`` continues from the saved step to
    the posterior an uninterrupted fit gives.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs} (max_steps only caps the steps of those epochs)")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 when given, got {max_steps}")
    from pyro_bhpeft.guides import is_factorised

    if flipout and not is_factorised(guide):
        raise ValueError(f"flipout needs a mean-field guide (per-site loc and scale), not {type(guide).__name__}")
    pyro.set_rng_seed(seed)
    model.num_data = _num_data(data, num_data)
    batches = list(data) if not hasattr(data, "__len__") else data
    with torch.no_grad(), poutine.block():
        guide(*next(iter(batches)))  # set the guide's parameters up
    _check_priors(model, guide)
    total = epochs * len(batches) if max_steps is None else min(max_steps, epochs * len(batches))
    schedule = {"factor": final_lr_factor, "total": total, "warmup_ratio": warmup_ratio, "decay": lr_decay}
    steps = _make_steps(model, guide, lr, scale_lr, weight_decay, schedule, clip_norm, num_particles, kl_step, flipout,
                        site_lr)
    rank, world_size = world()
    if world_size > 1:  # data parallel: gradients averaged across ranks, each rank's noise its own
        steps.loss_fn = wrap_loss(steps.loss_fn)
        pyro.set_rng_seed(seed + rank)
        progress = progress and rank == 0
    record_every = max(1, total // 50)
    curves: dict[str, list] = {"loss": [], "nll": [], "kl": [], "beta": [], "time": [], "scale_steps": []}
    trace: dict[str, list[float]] = {}
    _record_scales(guide, 0, curves, trace)
    step, resumed_rng, earlier = 0, None, 0.0  # earlier: seconds spent before the checkpoint
    if checkpoint is not None and checkpoint.resume:
        step, curves, trace, resumed_rng, earlier = _restore(load_state(checkpoint), steps, model)
    bar = tqdm(total=total, initial=step, desc="fit", disable=not progress, unit="step", dynamic_ncols=True)
    start, skip = time.perf_counter(), step  # resuming: replay the data order up to the saved step
    stop = StopOnInterrupt() if checkpoint is not None else contextlib.nullcontext()
    with stop:
        while step < total:
            for inputs, labels in batches:
                if skip:
                    skip -= 1
                    continue
                if resumed_rng is not None:  # here, not before the loop: a DataLoader's iterator draws from it
                    set_rng_state(resumed_rng)
                    resumed_rng = None
                tick = time.perf_counter()
                beta = kl_schedule(step, kl_weight, kl_anneal_steps)
                pi = blob_kl_weight(step, len(batches)) if kl_step and kl_step.schedule == "blob" else 1.0 / len(batches)
                loss, nll, kl = steps.take(inputs, labels, beta, pi)
                for key, value in (("loss", loss), ("nll", nll), ("kl", kl), ("beta", beta),
                                   ("time", time.perf_counter() - tick)):
                    curves[key].append(value)
                step += 1
                bar.update(1)
                if step % record_every == 0 or step == total:
                    _record_scales(guide, step, curves, trace)
                if step % 10 == 0:
                    shown = {"nll": f"{_tail_mean(curves['nll'], 10):.4f}"}
                    if beta > 0:  # a point estimate (or a fit with its KL switched off) has no KL to show
                        shown.update(kl=f"{_tail_mean(curves['kl'], 10):.4f}", kl_w=f"{beta:.2f}")
                    bar.set_postfix(shown)
                if step >= total:
                    break
                if checkpoint is not None and (stop.requested or (checkpoint.every and step % checkpoint.every == 0)):
                    save_state(checkpoint.path, _capture(steps, model, step, curves, trace, checkpoint.identity,
                                                         earlier + time.perf_counter() - start))
                    if stop.requested:
                        bar.close()
                        raise FitInterrupted(step, total, Path(checkpoint.path))
    bar.close()
    model.kl_weight = 1.0
    warnings = scale_warnings(curves["scale_steps"], trace)
    for line in warnings if progress else ():
        print(f"fit: warning: {line}", file=sys.stderr)
    posterior = Posterior(model, guide, backbone_name=backbone_name, meta=meta)
    return FitResult(posterior, curves["loss"], curves["beta"], curves["time"], step, earlier + time.perf_counter() - start,
                     curves["nll"], curves["kl"], curves["scale_steps"], trace, warnings)


def _capture(steps: _Steps, model: Any, step: int, curves: dict, trace: dict, identity: Any,
             seconds: float) -> dict[str, Any]:
    """Everything the rest of the fit depends on (see :mod:`pyro_bhpeft.checkpoint`)."""
    optimisers = [(steps.optimizer, steps.schedule), (steps.kl_optimizer, steps.kl_schedule)]
    return {"step": step, "identity": identity, "seconds": seconds, "guide": steps.guide.state_dict(), "rng": rng_state(),
            "prior": [p.detach().clone() for p in _hyper(model)], "curves": curves, "trace": trace,
            "optimisers": [(o.state_dict(), s.state_dict()) if o is not None else None for o, s in optimisers]}


def _restore(state: dict[str, Any], steps: _Steps, model: Any) -> tuple[int, dict, dict, dict, float]:
    """Load the saved guide, prior scales and optimiser state; returns step, curves, trace, the RNG state
    to set at the first step trained after the replayed ones, and the seconds spent before."""
    steps.guide.load_state_dict(state["guide"])
    with torch.no_grad():
        for p, saved in zip(_hyper(model), state["prior"]):
            p.copy_(saved)
    for (optimizer, schedule), saved in zip([(steps.optimizer, steps.schedule), (steps.kl_optimizer, steps.kl_schedule)],
                                            state["optimisers"]):
        if optimizer is not None and saved is not None:
            optimizer.load_state_dict(saved[0])
            schedule.load_state_dict(saved[1])
    return state["step"], state["curves"], state["trace"], state["rng"], state["seconds"]


def _hyper(model: Any) -> list[torch.Tensor]:
    """The learned prior scales of ``model`` (empirical Bayes), if any."""
    return list(getattr(getattr(model, "prior", None), "parameters", lambda: [])())


def _check_priors(model: Any, guide: Any) -> None:
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


def _record_scales(guide: Any, step: int, curves: dict[str, list], trace: dict[str, list[float]]) -> None:
    scales = _mean_scales(guide)
    if scales:
        curves["scale_steps"].append(step)
        for name, value in scales.items():
            trace.setdefault(name, []).append(value)


def _make_steps(model, guide, lr, scale_lr, weight_decay, schedule, clip_norm, num_particles, kl_step,
                flipout, site_lr=None) -> _Steps:
    groups = _param_groups(guide, lr, scale_lr or lr, weight_decay, site_lr)
    hyper = _hyper(model)
    if hyper:  # empirical Bayes: prior scales learn with the posterior scales
        groups.append({"params": hyper, "lr": scale_lr or lr, "weight_decay": 0.0})
    optimizer = torch.optim.Adam(groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaled_guide = _KLScaledGuide(guide)
    steps = _Steps(model, guide, _elbo_for(guide, num_particles)(model, scaled_guide), scaled_guide, optimizer,
                   _decay(optimizer, **schedule), params, clip_norm, flipout=flipout,
                   num_particles=num_particles)
    if kl_step is not None:
        steps.kl_step = kl_step
        steps.kl_loss = _elbo_for(guide, 1)(model, scaled_guide)
        guide_params = [p for p in params if not any(p is h for h in hyper)]  # prior scales learn in the Adam step
        steps.kl_optimizer = torch.optim.SGD(guide_params, lr=kl_step.lr)
        steps.kl_schedule = _decay(steps.kl_optimizer, **schedule)
    return steps
