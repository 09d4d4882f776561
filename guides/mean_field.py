"""Mean-field Gaussian posterior over the PEFT and head sites, with a choice of scale parameterisation.

``q(w) = prod_s Normal(w_s | loc_s, scale_s)``; sites matching ``deterministic`` are point masses.
The scale parameterisation (:mod:`.scale`: ``log``, ``softplus``, ``rho2``) decides how fast an optimiser
can move a scale.

Example::

    guide = MeanField(model, init_scale=1e-2)                                   # log-scales
    guide = MeanField(model, scale_param="rho2", init_scale=(0.0354 ** 2, 0.05 ** 2),
                      deterministic=("*.lora_B", "head.*"))                      # BLoB
"""

from __future__ import annotations

import fnmatch
from operator import attrgetter
from typing import Any, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam

from pyro_bhpeft.config import ConfigError

from .common import check_global_real, local_params, model_init, scoped_guide
from .contract import ContractGuide
from .scale import DEFAULT_SCALE_PARAM, LEGACY_SCALE_PARAM, SCALE_PARAMS, ScaleParam

__all__ = ["MeanField", "SCALE_PARAMS"]


@scoped_guide
class MeanField(ContractGuide, AutoGuide):
    """Independent Normals per site; ``deterministic`` globs (e.g. ``("*.lora_B",)``) are point masses.

    ``init_scale`` is one starting scale, or ``(low, high)``: each entry's start drawn uniformly
    between them in the parameterisation's own space: log-scale for ``log``, ``rho`` for ``rho2`` (BLoB
    draws ``rho ~ U(0.0354, 0.05)``), the scale itself for ``softplus``.
    """

    elbo = TraceMeanField_ELBO  # analytic KL per site
    factorised = True

    def __init__(self, model, *, init_scale: float | Sequence[float] = 1e-2, deterministic: Sequence[str] = (),
                 scale_param: str = DEFAULT_SCALE_PARAM) -> None:
        if scale_param not in SCALE_PARAMS:
            raise ConfigError(f"unknown scale parameterisation {scale_param!r}; choose one of {', '.join(SCALE_PARAMS)}")
        low, high = (init_scale, init_scale) if isinstance(init_scale, (int, float)) else tuple(init_scale)
        if not 0 < low <= high:
            raise ConfigError(f"init_scale must be positive (a value or low <= high), got {init_scale}")
        self.init_scale = float(low) if low == high else (float(low), float(high))
        self.deterministic = tuple(deterministic)
        self.scale_param = scale_param
        self.scaling: ScaleParam = SCALE_PARAMS[scale_param]
        super().__init__(InitMessenger(model_init(model))(model))

    def is_deterministic(self, name: str) -> bool:
        cache = self.__dict__.setdefault("_deterministic_cache", {})  # patterns are fixed: match each name once
        if name not in cache:
            cache[name] = any(fnmatch.fnmatchcase(name, p) for p in self.deterministic)
        return cache[name]

    def _initial_scale(self, like: torch.Tensor) -> torch.Tensor:
        low, high = (self.init_scale, self.init_scale) if isinstance(self.init_scale, float) else self.init_scale
        if low == high:
            return self.scaling.from_scale(torch.full_like(like, low))
        lo, hi = self.scaling.from_scale(torch.tensor(low)), self.scaling.from_scale(torch.tensor(high))
        return torch.empty_like(like).uniform_(float(lo), float(hi))

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.event_dims: dict[str, int] = {}
        self.locs, self.scales = PyroModule(), PyroModule()
        constraint = self.scaling.constraint
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            check_global_real(site, "MeanField")
            loc = site["value"].detach().clone()
            self.event_dims[name] = event_dim = site["fn"].event_dim
            deep_setattr(self.locs, name, PyroParam(loc, constraints.real, event_dim))
            if not self.is_deterministic(name):
                deep_setattr(self.scales, name, PyroParam(self._initial_scale(loc), constraint, event_dim))

    def site_names(self) -> list[str]:
        return [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]

    def loc(self, name: str) -> torch.Tensor:
        return attrgetter(name)(self.locs)

    def scale(self, name: str) -> torch.Tensor | None:
        """The posterior scale of ``name`` (None for a point mass), differentiable."""
        if self.is_deterministic(name):
            return None
        return self.scaling.to_scale(attrgetter(name)(self.scales))

    def site_loc(self, name: str) -> torch.Tensor | None:
        return None if self.is_deterministic(name) else self.loc(name)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        result = {}
        for name in self.site_names():
            loc, scale, event_dim = self.loc(name), self.scale(name), self.event_dims[name]
            fn = dist.Delta(loc, event_dim=event_dim) if scale is None else dist.Normal(loc, scale).to_event(event_dim)
            result[name] = pyro.sample(name, fn)
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: self.loc(name).clone() for name in self.site_names()}

    @torch.no_grad()
    def marginals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per-site (loc, scale); scale is None for point-mass sites."""
        out = {}
        for name in self.site_names():
            scale = self.scale(name)
            out[name] = (self.loc(name).clone(), None if scale is None else scale.detach().clone())
        return out

    def variance_parameters(self) -> list[torch.nn.Parameter]:
        """The raw scale parameters (they may learn at their own rate)."""
        return [p for p in self.scales.parameters()]

    def config(self) -> dict[str, Any]:
        init = self.init_scale if isinstance(self.init_scale, float) else list(self.init_scale)
        return {"init_scale": init, "deterministic": list(self.deterministic), "scale_param": self.scale_param}

    @classmethod
    def from_config(cls, model, kwargs: dict[str, Any]) -> "MeanField":
        """Rebuild from :meth:`config`; configs saved before 0.2 (no ``scale_param``) used softplus scales."""
        return cls(model, **{"scale_param": LEGACY_SCALE_PARAM, **kwargs})

    @classmethod
    @local_params
    def from_marginals(cls, model, locs: dict[str, torch.Tensor], scales: dict[str, torch.Tensor | None],
                       **options: Any) -> "MeanField":
        """A mean-field guide with the given per-site locs and scales (e.g. a Laplace approximation).

        Every site of ``model`` needs a loc of its shape; a scale of that shape (positive), or None for a
        site the guide keeps a point mass (``deterministic`` in ``options``).
        """
        guide = cls(model, **options)
        with torch.no_grad(), pyro.poutine.block():
            guide(*model.dummy_data())
        for name in guide.site_names():
            scale = scales.get(name)
            if name not in locs or (scale is None) != guide.is_deterministic(name):
                raise ValueError(f"from_marginals needs a loc for every site, and a scale exactly for the sites that are "
                                 f"not point masses; site {name!r} breaks that")
            loc, event_dim, shape = locs[name], guide.event_dims[name], guide.loc(name).shape
            if loc.shape != shape or (scale is not None and (scale.shape != shape or not (scale > 0).all())):
                raise ValueError(f"site {name!r}: loc and scale must have shape {tuple(shape)} and the scale "
                                 "must be positive")
            deep_setattr(guide.locs, name, PyroParam(loc.detach().clone(), constraints.real, event_dim))
            if scale is not None:
                raw = guide.scaling.from_scale(scale.detach().clone())
                deep_setattr(guide.scales, name, PyroParam(raw, guide.scaling.constraint, event_dim))
        return guide

