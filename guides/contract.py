"""The guide contract: what fitting, predicting, the next round's prior and saving need of a guide.

The library reads guide behaviour only through :class:`PosteriorGuide` (class attributes and methods,
as Pyro's autoguides expose ``scale_constraint``), never by testing guide classes. Our guides derive
from :class:`ContractGuide`, which also makes every subclass (registered or not) known by its class
name, so a posterior with a user's ``MeanField`` subclass saves and loads. A foreign guide (a plain Pyro
autoguide) gets the defaults of the helper functions below.

Example::

    class Tempered(MeanField):          # gets MeanField's ELBO, flipout and saving, no registration
        pass
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.autoguide import AutoDelta

__all__ = ["PosteriorGuide", "ContractGuide", "JointCovariance", "elbo_for", "is_point_mass", "variance_parameters",
           "is_factorised", "joint_covariance", "guide_classes"]


@dataclass(frozen=True)
class JointCovariance:
    """A low-rank-plus-diagonal covariance ``F F^T + diag(d)`` over ``sites`` packed in this order."""

    sites: tuple[str, ...]
    factor: torch.Tensor  # (latent dim, rank)
    diag: torch.Tensor  # (latent dim,)


@runtime_checkable
class PosteriorGuide(Protocol):
    """What :func:`~pyro_bhpeft.infer.fit`, :func:`~pyro_bhpeft.predict.predict`,
    :func:`~pyro_bhpeft.continual.posterior_prior` and :class:`~pyro_bhpeft.Posterior` read of a guide.

    ``elbo``: the ELBO class that fits it (analytic KL where its sites allow); ``point_mass``: every site is a
    point mass, so K posterior draws are all the same; ``factorised``: each random site is an independent
    Normal around :meth:`site_loc` (flipout and a per-site flat-prior check need that).
    """

    elbo: ClassVar[type[ELBO]]
    point_mass: ClassVar[bool]
    factorised: ClassVar[bool]

    def marginals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per-site (loc, scale), scale None for a point mass."""

    def joint_covariance(self) -> JointCovariance | None:
        """The covariance the sites share beyond their marginals (a low-rank factor), or None."""

    def variance_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters that set the posterior's spread (they may learn at their own rate)."""

    def site_loc(self, name: str) -> torch.Tensor | None:
        """The differentiable location of a random site of a factorised guide (None for a point mass)."""

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild the guide with ``from_config(model, config)``."""


_CLASSES: dict[str, type] = {}


class ContractGuide:
    """Mixin of our guides: the contract's defaults, and every subclass known by name for loading."""

    elbo: ClassVar[type[ELBO]] = Trace_ELBO
    point_mass: ClassVar[bool] = False
    factorised: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

    def joint_covariance(self) -> JointCovariance | None:
        return None

    def site_loc(self, name: str) -> torch.Tensor | None:
        return None

    @classmethod
    def from_config(cls, model: Any, kwargs: dict[str, Any]) -> Any:
        return cls(model, **kwargs)


def guide_classes() -> dict[str, type]:
    """Every guide class that follows the contract, by class name (subclasses count once defined)."""
    return dict(_CLASSES)


def elbo_for(guide: Any, num_particles: int = 1) -> ELBO:
    """The guide's ELBO (Monte Carlo ``Trace_ELBO`` for a foreign guide)."""
    elbo = getattr(guide, "elbo", None)
    elbo = elbo if isinstance(elbo, type) and issubclass(elbo, ELBO) else Trace_ELBO
    return elbo(num_particles=num_particles, vectorize_particles=False)


def is_point_mass(guide: Any) -> bool:
    """Whether every draw of ``guide`` is the same (a foreign guide: whether it is a Pyro ``AutoDelta``)."""
    return bool(getattr(guide, "point_mass", isinstance(guide, AutoDelta)))


def is_factorised(guide: Any) -> bool:
    return bool(getattr(guide, "factorised", False))


def variance_parameters(guide: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The guide's variance parameters; for a foreign guide, those Pyro's autoguides name ``scale``/``cov_factor``."""
    if hasattr(guide, "variance_parameters"):
        return list(guide.variance_parameters())
    return [p for n, p in guide.named_parameters() if "scale" in n or "cov_factor" in n]


def joint_covariance(guide: Any) -> JointCovariance | None:
    return guide.joint_covariance() if hasattr(guide, "joint_covariance") else None
