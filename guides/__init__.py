"""Variational families for the PEFT posterior, interchangeable on any of our models.

Each guide is a small subclass of one of Pyro's autoguides that starts where the model says
(LoRA's ``B`` at zero, adapters as the identity; :meth:`BayesianPeftModel.initial_values`) with a
small posterior scale, so the first samples do not swamp the pretrained function.

Example::

    guide = MeanField(model, init_scale=1e-2, deterministic=("*.lora_B",))   # BLoB-style
    guide = LowRank(model, rank=8)
    guide = Delta(model)                                                       # MAP
"""

from __future__ import annotations

import fnmatch
from operator import attrgetter
from typing import Any, Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoLowRankMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median
from pyro.nn.module import PyroModule, PyroParam
from pyro.infer.autoguide.utils import deep_setattr

from pyro_bhpeft.config import ConfigError

__all__ = ["MeanField", "LowRank", "Delta", "GUIDES", "guide_config", "model_init"]


def model_init(model: Any) -> Callable[[dict], torch.Tensor]:
    """An ``init_loc_fn`` that starts each site at ``model.initial_values()`` (drawn lazily, once)."""
    cache: dict[str, torch.Tensor] = {}

    def init(site: dict) -> torch.Tensor:
        if not cache and hasattr(model, "initial_values"):
            cache.update(model.initial_values())
        value = cache.get(site["name"])
        return value if value is not None else init_to_median(site)

    return init


def _check_global_real(site: dict, guide: str) -> None:
    if site["fn"].support is not constraints.real and not isinstance(site["fn"].support, constraints.independent):
        raise ValueError(f"{guide} needs real-valued sites, but {site['name']!r} has support {site['fn'].support}; "
                         "reparameterise it (e.g. sample a log-scale) or use a Pyro autoguide")
    if site["cond_indep_stack"]:
        raise ValueError(f"{guide} handles global sites only; {site['name']!r} sits inside a plate")


class MeanField(AutoNormal):
    """``q(w) = prod_s Normal(w_s | loc_s, scale_s)``; sites matching ``deterministic`` are point masses.

    Scales are softplus-parameterised and start at ``init_scale``. ``deterministic`` takes glob
    patterns of site names, e.g. ``("*.lora_B",)`` keeps LoRA's B a point estimate as in BLoB.
    """

    def __init__(self, model, *, init_scale: float = 1e-2, deterministic: Sequence[str] = ()) -> None:
        self.deterministic = tuple(deterministic)
        super().__init__(model, init_loc_fn=model_init(model), init_scale=float(init_scale))

    def is_deterministic(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.deterministic)

    def _setup_prototype(self, *args, **kwargs) -> None:
        AutoGuide._setup_prototype(self, *args, **kwargs)
        self._event_dims = {}
        self.locs, self.scales = PyroModule(), PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            _check_global_real(site, "MeanField")
            loc = site["value"].detach().clone()
            self._event_dims[name] = event_dim = site["fn"].event_dim
            deep_setattr(self.locs, name, PyroParam(loc, constraints.real, event_dim))
            if not self.is_deterministic(name):
                scale = torch.full_like(loc, self._init_scale)
                deep_setattr(self.scales, name, PyroParam(scale, self.scale_constraint, event_dim))

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        result = {}
        for name, _ in self.prototype_trace.iter_stochastic_nodes():
            loc, event_dim = attrgetter(name)(self.locs), self._event_dims[name]
            if self.is_deterministic(name):
                fn = dist.Delta(loc, event_dim=event_dim)
            else:
                fn = dist.Normal(loc, attrgetter(name)(self.scales)).to_event(event_dim)
            result[name] = pyro.sample(name, fn)
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: attrgetter(name)(self.locs).clone() for name, _ in self.prototype_trace.iter_stochastic_nodes()}

    @torch.no_grad()
    def marginals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per-site (loc, scale); scale is None for point-mass sites."""
        return {name: (attrgetter(name)(self.locs).clone(),
                       None if self.is_deterministic(name) else attrgetter(name)(self.scales).clone())
                for name, _ in self.prototype_trace.iter_stochastic_nodes()}

    def config(self) -> dict[str, Any]:
        return {"init_scale": self._init_scale, "deterministic": list(self.deterministic)}

    @classmethod
    def from_marginals(cls, model, locs: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> "MeanField":
        """A mean-field guide with the given per-site locs and scales (e.g. a Laplace approximation).

        Every site of ``model`` needs a loc and a positive scale of its shape.
        """
        guide = cls(model)
        with torch.no_grad(), pyro.poutine.block():
            guide(*model.dummy_data())
        for name, _ in guide.prototype_trace.iter_stochastic_nodes():
            if name not in locs or name not in scales:
                raise ValueError(f"from_marginals needs a loc and a scale for every site; {name!r} is missing")
            loc, scale, event_dim = locs[name], scales[name], guide._event_dims[name]
            if loc.shape != attrgetter(name)(guide.locs).shape or scale.shape != loc.shape or not (scale > 0).all():
                raise ValueError(f"site {name!r}: loc and scale must have shape "
                                 f"{tuple(attrgetter(name)(guide.locs).shape)} and the scale must be positive")
            deep_setattr(guide.locs, name, PyroParam(loc.detach().clone(), constraints.real, event_dim))
            deep_setattr(guide.scales, name, PyroParam(scale.detach().clone(), guide.scale_constraint, event_dim))
        return guide


class LowRank(AutoLowRankMultivariateNormal):
    """``q(w) = MVN(loc, D (F F^T + I) D)`` over all sites jointly, with ``F`` of width ``rank``.

    ``rank`` is required: Pyro's default (sqrt of the latent dimension) is enormous at PEFT scale.
    """

    def __init__(self, model, *, rank: int, init_scale: float = 1e-2) -> None:
        if int(rank) < 1:
            raise ConfigError(f"LowRank rank must be a positive integer, got {rank}")
        super().__init__(model, init_loc_fn=model_init(model), init_scale=float(init_scale), rank=int(rank))

    @torch.no_grad()
    def marginals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        loc, scale = self._loc_scale()
        scales = {site["name"]: s for site, s in self._unpack_latent(scale)}
        return {site["name"]: (v.clone(), scales[site["name"]].clone()) for site, v in self._unpack_latent(loc)}

    @torch.no_grad()
    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loc, cov_factor, cov_diag) of the joint posterior over the packed latent vector."""
        post = self.get_posterior()
        return post.loc.clone(), post.cov_factor.clone(), post.cov_diag.clone()

    def site_slices(self) -> dict[str, tuple[slice, tuple[int, ...]]]:
        """Where each site lies in the packed latent vector, and its shape (Pyro's packing order)."""
        out, pos = {}, 0
        for name, shape in self._unconstrained_shapes.items():
            size = int(torch.Size(shape).numel())
            out[name] = (slice(pos, pos + size), tuple(shape))
            pos += size
        return out

    def config(self) -> dict[str, Any]:
        return {"rank": self.rank, "init_scale": self._init_scale}


class Delta(AutoDelta):
    """A point mass at ``loc``: fitting it by SVI is MAP estimation, the deterministic baseline."""

    def __init__(self, model) -> None:
        super().__init__(model, init_loc_fn=model_init(model))

    @torch.no_grad()
    def marginals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        return {name: (value, None) for name, value in self.median().items()}

    def config(self) -> dict[str, Any]:
        return {}


GUIDES: dict[str, type] = {"MeanField": MeanField, "LowRank": LowRank, "Delta": Delta}


def guide_config(guide: Any) -> dict[str, Any]:
    """``{"class": name, "kwargs": {...}}`` to rebuild ``guide`` on a fresh model."""
    name = type(guide).__name__
    if name not in GUIDES or not hasattr(guide, "config"):
        raise TypeError(f"only the guides {', '.join(GUIDES)} can be saved; {name} cannot "
                        "(save its state_dict yourself)")
    return {"class": name, "kwargs": guide.config()}
