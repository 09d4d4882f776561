"""How a mean-field guide parameterises a posterior scale: one small strategy object per choice.

=============  =============================  =================================================
``log``        ``scale = exp(raw)``           scale-free: an Adam step changes log-scale by ~lr,
                                              so a scale crosses a decade in ``2.3 / lr`` steps
``softplus``   ``scale = softplus(raw)``      Pyro's ``AutoNormal``; log-like below ~0.1, linear
                                              above (runs saved before 0.2 use it)
``rho2``       ``scale = raw ** 2``           BLoB's ``sigma = rho^2`` (Wang et al. 2024)
=============  =============================  =================================================

A new one is a :class:`ScaleParam` and one line, ``SCALE_PARAMS.register("name", MyScale())``.
"""

from __future__ import annotations

import torch
from pyro.distributions import constraints

from pyro_bhpeft.registry import Registry

__all__ = ["ScaleParam", "SCALE_PARAMS", "DEFAULT_SCALE_PARAM", "LEGACY_SCALE_PARAM"]


class ScaleParam:
    """``raw`` is the value a guide stores for a scale (read through ``constraint``, as a PyroParam does):
    :meth:`to_scale` maps it to the scale, :meth:`from_scale` back."""

    constraint: constraints.Constraint = constraints.real

    def to_scale(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_scale(self, scale: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LogScale(ScaleParam):
    def to_scale(self, raw):
        return raw.exp()

    def from_scale(self, scale):
        return scale.log()


class SoftplusScale(ScaleParam):
    """The PyroParam's ``softplus_positive`` constraint stores the inverse itself: raw is already the scale."""

    constraint = constraints.softplus_positive

    def to_scale(self, raw):
        return raw

    def from_scale(self, scale):
        return scale


class Rho2Scale(ScaleParam):
    def to_scale(self, raw):
        return raw.square()

    def from_scale(self, scale):
        return scale.sqrt()


SCALE_PARAMS: Registry[ScaleParam] = Registry("scale parameterisation")
SCALE_PARAMS.register("log", LogScale())
SCALE_PARAMS.register("softplus", SoftplusScale())
SCALE_PARAMS.register("rho2", Rho2Scale())

DEFAULT_SCALE_PARAM = "log"  # MeanField's default (every committed MeanField(...) fit used it)
LEGACY_SCALE_PARAM = "softplus"  # what guides saved before 0.2 (no ``scale_param`` in their config) used
