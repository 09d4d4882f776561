"""The loop behind :func:`~pyro_bhpeft.infer.fit`: one small step function and callbacks around it.

:class:`Stepper` takes one optimisation step, its update strategy the joint step (:class:`JointUpdate`) or
BLoB's split step (:class:`SplitKLUpdate`, given a :class:`~pyro_bhpeft.infer.KLStep`), steering the model
only through effect handlers (:mod:`pyro_bhpeft.models.effects`: the KL weight, the data size, flipout).
:class:`Trainer` runs it over the batches and calls its callbacks (as Lightning's ``Callback``):
:class:`ScaleTrace` records the posterior scales, :class:`ProgressBar` shows the curves, :class:`Checkpointing`
saves, resumes and stops cleanly on Ctrl-C, :class:`DataParallel` averages gradients across ranks.
"""

from __future__ import annotations

import contextlib
import fnmatch
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from tqdm.auto import tqdm

from .checkpoint import FitInterrupted, StopOnInterrupt, load_state, rng_state, save_state, set_rng_state
from .config import ConfigError
from .distributed import world, wrap_loss
from .infer import FitOptions, FitResult, blob_kl_weight, kl_schedule, lr_factor, scale_warnings, tail_mean
from .models.effects import DATA_PLATE, DataSize, Flipout, KLWeight
from .posterior import Posterior

__all__ = ["Trainer", "Stepper", "JointUpdate", "SplitKLUpdate", "Callback", "ScaleTrace", "ProgressBar", "Checkpointing", "DataParallel"]


class _Likelihood(Messenger):
    """Records the (plate-scaled) log-likelihood of the observed sites inside the data plate."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0.0

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["is_observed"] and any(f.name == DATA_PLATE for f in msg["cond_indep_stack"]):
            self.value += float(msg["fn"].log_prob(msg["value"]).detach().sum()) * float(msg["scale"])


@dataclass
class Stepper:
    """One optimisation step; returns (loss, nll, kl) per example. How the step treats the KL term is its
    ``update`` strategy: :class:`JointUpdate` (one step on the whole loss) or :class:`SplitKLUpdate` (BLoB)."""

    guide: Any
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    schedule: Any
    params: list
    clip_norm: float | None
    num_data: int
    flipout: bool = False
    num_particles: int = 1
    update: Any = None  # JointUpdate() when None

    def nll_loss(self, inputs, labels, beta: float) -> tuple[torch.Tensor, float]:
        """The loss per example (likelihood scaled to the data, KL weighted by ``beta``) and its NLL part."""
        recorder = _Likelihood()
        flipout = Flipout(self.guide.site_loc) if self.flipout else contextlib.nullcontext()
        with recorder, KLWeight(beta), DataSize(self.num_data), flipout:
            loss = self.loss_fn(inputs, labels) / self.num_data
        return loss, -recorder.value / self.num_particles / self.num_data

    def take(self, inputs, labels, beta: float, pi: float) -> tuple[float, float, float]:
        return (self.update or JointUpdate())(self, inputs, labels, beta, pi)

    def step(self, loss: torch.Tensor, optimizer, schedule, clip: bool = True) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip and self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        optimizer.step()
        schedule.step()

    def optimisers(self) -> list[tuple[Any, Any]]:
        """(optimiser, schedule) of the main step and of the KL step (None, None without one), as checkpointed."""
        return [(self.optimizer, self.schedule), getattr(self.update, "optimiser", (None, None))]


class JointUpdate:
    """One Adam step on ``NLL + beta KL``."""

    def __call__(self, s: Stepper, inputs, labels, beta: float, pi: float) -> tuple[float, float, float]:
        loss, nll = s.nll_loss(inputs, labels, beta)
        s.step(loss, s.optimizer, s.schedule)
        kl = (float(loss.detach()) - nll) / beta if beta > 0 else float("nan")
        return float(loss.detach()), nll, kl


@dataclass
class SplitKLUpdate:
    """BLoB's split step: an Adam step on the likelihood, then an SGD step on ``beta * pi * KL`` over the KL-only
    ELBO ``kl_loss`` (the prior model: no forward pass), unclipped as BLoB."""

    kl_loss: Any
    kl_optimizer: torch.optim.Optimizer
    kl_schedule: Any

    @property
    def optimiser(self) -> tuple[Any, Any]:
        return self.kl_optimizer, self.kl_schedule

    def __call__(self, s: Stepper, inputs, labels, beta: float, pi: float) -> tuple[float, float, float]:
        loss, nll = s.nll_loss(inputs, labels, 0.0)
        s.step(loss, s.optimizer, s.schedule)
        kl_total = self.kl_loss(inputs, labels)  # KL weight 1
        s.step(beta * pi * kl_total, self.kl_optimizer, self.kl_schedule, clip=False)
        kl = float(kl_total.detach()) / s.num_data
        return nll + beta * kl, nll, kl


def hyper(model: Any) -> list[torch.Tensor]:
    """The learned prior scales of ``model`` (empirical Bayes), if any."""
    return list(getattr(getattr(model, "prior", None), "parameters", lambda: [])())


def param_groups(guide: torch.nn.Module, lr: float, scale_lr: float, weight_decay: float,
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


def _schedule(optimizer: torch.optim.Optimizer, options: FitOptions, total: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total, options.final_lr_factor, options.warmup_ratio, options.lr_decay))


def make_stepper(model: Any, guide: Any, options: FitOptions, num_data: int, total: int) -> Stepper:
    """The optimisers (Adam; SGD for a split KL step) and ELBOs of one fit."""
    from pyro_bhpeft.guides import elbo_for

    scale_lr = options.scale_lr or options.lr
    groups = param_groups(guide, options.lr, scale_lr, options.weight_decay, options.site_lr)
    prior_scales = hyper(model)
    if prior_scales:  # empirical Bayes: prior scales learn with the posterior scales
        groups.append({"params": prior_scales, "lr": scale_lr, "weight_decay": 0.0})
    optimizer = torch.optim.Adam(groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    stepper = Stepper(guide, elbo_for(guide, options.num_particles)(model, guide), optimizer,
                      _schedule(optimizer, options, total), params, options.clip_norm, num_data, options.flipout,
                      options.num_particles)
    if options.kl_step is not None:
        guide_params = [p for p in params if not any(p is h for h in prior_scales)]  # prior scales learn in Adam
        kl_optimizer = torch.optim.SGD(guide_params, lr=options.kl_step.lr)
        stepper.update = SplitKLUpdate(elbo_for(guide, 1)(model.prior_model, guide), kl_optimizer,
                                       _schedule(kl_optimizer, options, total))
    return stepper


class Callback:
    """A hook around the loop; each method is optional."""

    def on_start(self, trainer: "Trainer") -> None: ...

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def before_step(self, trainer: "Trainer") -> None: ...

    def after_step(self, trainer: "Trainer") -> None: ...

    def on_end(self, trainer: "Trainer") -> None: ...


class DataParallel(Callback):
    """Under ``torchrun``: gradients averaged across ranks (DDP around the ELBO), each rank's noise its own."""

    def on_start(self, trainer: "Trainer") -> None:
        rank, size = world()
        if size > 1:
            trainer.stepper.loss_fn = wrap_loss(trainer.stepper.loss_fn)
            pyro.set_rng_seed(trainer.options.seed + rank)


class ScaleTrace(Callback):
    """Each site's mean posterior scale, about 50 times over the fit (and at its start and end)."""

    def _record(self, trainer: "Trainer") -> None:
        marginals = trainer.guide.marginals() if hasattr(trainer.guide, "marginals") else {}
        scales = {name: float(scale.mean()) for name, (_, scale) in marginals.items() if scale is not None}
        if scales:
            trainer.curves["scale_steps"].append(trainer.step)
            for name, value in scales.items():
                trainer.trace.setdefault(name, []).append(value)

    def on_start(self, trainer: "Trainer") -> None:
        self.every = max(1, trainer.total // 50)
        self._record(trainer)

    def after_step(self, trainer: "Trainer") -> None:
        if trainer.step % self.every == 0 or trainer.step == trainer.total:
            self._record(trainer)


class ProgressBar(Callback):
    """A tqdm bar with the recent NLL (and KL and its weight, where a KL is computed)."""

    def on_start(self, trainer: "Trainer") -> None:
        self.bar = tqdm(total=trainer.total, initial=trainer.step, desc="fit", unit="step", dynamic_ncols=True)

    def after_step(self, trainer: "Trainer") -> None:
        self.bar.update(1)
        if trainer.step % 10 == 0:
            shown = {"nll": f"{tail_mean(trainer.curves['nll'], 10):.4f}"}
            beta = trainer.curves["beta"][-1]
            if beta > 0:  # a point estimate (or a fit with its KL switched off) has no KL to show
                shown.update(kl=f"{tail_mean(trainer.curves['kl'], 10):.4f}", kl_w=f"{beta:.2f}")
            self.bar.set_postfix(shown)

    def on_end(self, trainer: "Trainer") -> None:
        self.bar.close()


class Checkpointing(Callback):
    """Save every ``checkpoint.every`` steps and at Ctrl-C (then raise :class:`FitInterrupted`); resume from
    the saved step, replaying the data order, to the posterior an uninterrupted fit gives."""

    def __init__(self, checkpoint: Any) -> None:
        self.checkpoint, self.rng, self.stop = checkpoint, None, StopOnInterrupt()

    def on_start(self, trainer: "Trainer") -> None:
        if self.checkpoint.resume:
            state = load_state(self.checkpoint)
            trainer.guide.load_state_dict(state["guide"])
            with torch.no_grad():
                for p, saved in zip(hyper(trainer.model), state["prior"]):
                    p.copy_(saved)
            for (optimizer, schedule), saved in zip(trainer.stepper.optimisers(), state["optimisers"]):
                if optimizer is not None and saved is not None:
                    optimizer.load_state_dict(saved[0])
                    schedule.load_state_dict(saved[1])
            trainer.step, trainer.curves, trainer.trace = state["step"], state["curves"], state["trace"]
            self.rng, trainer.earlier = state["rng"], state["seconds"]

    def context(self) -> contextlib.AbstractContextManager:
        return self.stop

    def before_step(self, trainer: "Trainer") -> None:
        if self.rng is not None:  # here, not before the loop: a DataLoader's iterator draws from it
            set_rng_state(self.rng)
            self.rng = None

    def after_step(self, trainer: "Trainer") -> None:
        every = self.checkpoint.every
        if trainer.step >= trainer.total or not (self.stop.requested or (every and trainer.step % every == 0)):
            return
        save_state(self.checkpoint.path, self._capture(trainer))
        if self.stop.requested:
            raise FitInterrupted(trainer.step, trainer.total, Path(self.checkpoint.path))

    def _capture(self, trainer: "Trainer") -> dict[str, Any]:
        """Everything the rest of the fit depends on (see :mod:`pyro_bhpeft.checkpoint`)."""
        return {"step": trainer.step, "identity": self.checkpoint.identity, "seconds": trainer.seconds(),
                "guide": trainer.guide.state_dict(), "rng": rng_state(),
                "prior": [p.detach().clone() for p in hyper(trainer.model)], "curves": trainer.curves,
                "trace": trainer.trace,
                "optimisers": [(o.state_dict(), s.state_dict()) if o is not None else None
                               for o, s in trainer.stepper.optimisers()]}


def _num_data(data: Iterable, num_data: int | None) -> int:
    if num_data is not None:
        return int(num_data)
    dataset = getattr(data, "dataset", None)
    if dataset is None:
        raise ValueError("fit needs num_data (the full training size) when data is not a DataLoader")
    return len(dataset)


class Trainer:
    """Fits ``guide`` to ``model`` on batches under ``options`` (:class:`~pyro_bhpeft.infer.FitOptions`)."""

    def __init__(self, model: Any, guide: Any, options: FitOptions) -> None:
        self.model, self.guide, self.options = model, guide, options
        self.progress = options.progress and world()[0] == 0  # only rank 0 shows and warns
        self.step, self.earlier = 0, 0.0  # earlier: seconds spent before a resumed checkpoint
        self.curves: dict[str, list] = {"loss": [], "nll": [], "kl": [], "beta": [], "time": [], "scale_steps": []}
        self.trace: dict[str, list[float]] = {}
        self.callbacks: list[Callback] = [DataParallel(), ScaleTrace()]
        if options.checkpoint is not None:
            self.callbacks.append(Checkpointing(options.checkpoint))
        if self.progress:
            self.callbacks.append(ProgressBar())

    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self.start

    def run(self, data: Iterable[tuple[dict, torch.Tensor]]) -> FitResult:
        from .infer import check_priors

        options, model, guide = self.options, self.model, self.guide
        pyro.set_rng_seed(options.seed)
        num_data = _num_data(data, options.num_data)
        batches = list(data) if not hasattr(data, "__len__") else data
        with torch.no_grad(), poutine.block():
            guide(*next(iter(batches)))  # set the guide's parameters up
        check_priors(model, guide)
        epoch_steps = len(batches)
        self.total = total = epoch_steps * options.epochs if options.max_steps is None else min(
            options.max_steps, options.epochs * epoch_steps)
        self.stepper = make_stepper(model, guide, options, num_data, total)
        try:
            for callback in self.callbacks:
                callback.on_start(self)
            self.start, skip = time.perf_counter(), self.step  # resuming: replay the data order up to the saved step
            with contextlib.ExitStack() as stack:
                for callback in self.callbacks:
                    stack.enter_context(callback.context())
                while self.step < total:
                    for inputs, labels in batches:
                        if skip:
                            skip -= 1
                            continue
                        self._one_step(inputs, labels, epoch_steps)
                        if self.step >= total:
                            break
        finally:
            for callback in self.callbacks:
                callback.on_end(self)
        warnings = scale_warnings(self.curves["scale_steps"], self.trace)
        for line in warnings if self.progress else ():
            print(f"fit: warning: {line}", file=sys.stderr)
        posterior = Posterior(model, guide, backbone_name=options.backbone_name, meta=options.meta)
        c = self.curves
        return FitResult(posterior, c["loss"], c["beta"], c["time"], self.step, self.seconds(), c["nll"], c["kl"],
                         c["scale_steps"], self.trace, warnings)

    def _one_step(self, inputs, labels, epoch_steps: int) -> None:
        for callback in self.callbacks:
            callback.before_step(self)
        tick, kl_step = time.perf_counter(), self.options.kl_step
        beta = kl_schedule(self.step, self.options.kl_weight, self.options.kl_anneal_steps)
        pi = blob_kl_weight(self.step, epoch_steps) if kl_step and kl_step.schedule == "blob" else 1.0 / epoch_steps
        loss, nll, kl = self.stepper.take(inputs, labels, beta, pi)
        for key, value in (("loss", loss), ("nll", nll), ("kl", kl), ("beta", beta), ("time", time.perf_counter() - tick)):
            self.curves[key].append(value)
        self.step += 1
        for callback in self.callbacks:
            callback.after_step(self)
