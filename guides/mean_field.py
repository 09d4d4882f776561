"""Mean-field Gaussian posterior over the PEFT and head sites, with a choice of scale parameterisation.

``q(w) = prod_s Normal(w_s | loc_s, scale_s)``; sites matching ``deterministic`` are point masses.
The scale parameterisation decides how fast an optimiser can move a scale:

=============  =============================  =================================================
``log``        ``scale = exp(raw)``           scale-free: an Adam step changes log-scale by ~lr,
                                              so a scale crosses a decade in ``2.3 / lr`` steps
``softplus``   ``scale = softplus(raw)``      Pyro's ``AutoNormal``; log-like below ~0.1, linear
                                              above (runs saved before 0.2 use it)
``rho2``       ``scale = raw ** 2``           BLoB's ``sigma = rho^2`` (Wang et al. 2024)
=============  =============================  =================================================

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
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam

from pyro_bhpeft.config import ConfigError

from .common import check_global_real, local_params, model_init, scoped_guide

__all__ = ["MeanField", "SCALE_PARAMS"]

SCALE_PARAMS = ("log", "softplus", "rho2")


def _to_raw(scale: torch.Tensor, how: str) -> torch.Tensor:
    if how == "log":
        return scale.log()
    if how == "rho2":
        return scale.sqrt()
    return scale  # softplus: PyroParam's softplus_positive constraint stores the inverse itself


@scoped_guide
class MeanField(AutoGuide):
    """Independent Normals per site; ``deterministic`` globs (e.g. ``("*.lora_B",)``) are point masses.

    ``init_scale`` is one starting scale, or ``(low, high)``: each entry's start drawn uniformly
    between them in the parameterisation's own space: log-scale for ``log``, ``rho`` for ``rho2`` (BLoB
    draws ``rho ~ U(0.0354, 0.05)``), the scale itself for ``softplus``.
    """

    def __init__(self, model, *, init_scale: float | Sequence[float] = 1e-2, deterministic: Sequence[str] = (),
                 scale_param: str = "log") -> None:
        if scale_param not in SCALE_PARAMS:
            raise ConfigError(f"unknown scale parameterisation {scale_param!r}; choose one of {', '.join(SCALE_PARAMS)}")
        low, high = (init_scale, init_scale) if isinstance(init_scale, (int, float)) else tuple(init_scale)
        if not 0 < low <= high:
            raise ConfigError(f"init_scale must be positive (a value or low <= high), got {init_scale}")
        self.init_scale = float(low) if low == high else (float(low), float(high))
        self.deterministic = tuple(deterministic)
        self.scale_param = scale_param
        super().__init__(InitMessenger(model_init(model))(model))

    def is_deterministic(self, name: str) -> bool:
        cache = self.__dict__.setdefault("_deterministic_cache", {})  # patterns are fixed: match each name once
        if name not in cache:
            cache[name] = any(fnmatch.fnmatchcase(name, p) for p in self.deterministic)
        return cache[name]

    def _initial_scale(self, like: torch.Tensor) -> torch.Tensor:
        low, high = (self.init_scale, self.init_scale) if isinstance(self.init_scale, float) else self.init_scale
        if low == high:
            return _to_raw(torch.full_like(like, low), self.scale_param)
        lo, hi = _to_raw(torch.tensor(low), self.scale_param), _to_raw(torch.tensor(high), self.scale_param)
        return torch.empty_like(like).uniform_(float(lo), float(hi))

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.event_dims: dict[str, int] = {}
        self.locs, self.scales = PyroModule(), PyroModule()
        constraint = constraints.softplus_positive if self.scale_param == "softplus" else constraints.real
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
        raw = attrgetter(name)(self.scales)
        if self.scale_param == "log":
            return raw.exp()
        if self.scale_param == "rho2":
            return raw.square()
        return raw  # softplus: the PyroParam constraint already applied it

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
        return cls(model, **{"scale_param": "softplus", **kwargs})

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
                raw = _to_raw(scale.detach().clone(), guide.scale_param)
                constraint = constraints.softplus_positive if guide.scale_param == "softplus" else constraints.real
                deep_setattr(guide.scales, name, PyroParam(raw, constraint, event_dim))
        return guide

