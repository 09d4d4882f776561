"""Variational families for the PEFT posterior, interchangeable on any of our models.

Each guide is a small subclass of one of Pyro's autoguides that starts where the model says
(LoRA's ``B`` at zero, adapters as the identity; :meth:`BayesianPeftModel.initial_values`) with a
small posterior scale, so the first samples do not swamp the pretrained function. Each follows the
guide contract (:class:`PosteriorGuide`: its ELBO, point mass or not, marginals, joint covariance,
variance parameters), which is all the fit, the predictions, the next round's prior and saving read.

``GUIDES`` maps the names the recipe and the CLI use to a :class:`GuideKind` (the class, how to
build it from a recipe, and whether the prior enters the fit). A new guide is one file plus one line,
``GUIDES.register("name", GuideKind(...))``; a subclass of one of ours needs no line to fit or save.

Example::

    guide = MeanField(model, init_scale=1e-2, deterministic=("*.lora_B",))   # B a point mass
    guide = LowRank(model, rank=8)
    guide = Delta(model)                                                       # MAP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pyro.infer import ELBO

from pyro_bhpeft.config import ConfigError
from pyro_bhpeft.registry import Registry

from .common import model_init
from .contract import (ContractGuide, JointCovariance, PosteriorGuide, elbo_for, guide_classes, is_factorised,
                       is_point_mass, joint_covariance, variance_parameters)
from .delta import Delta
from .low_rank import LowRank
from .mean_field import MeanField
from .scale import DEFAULT_SCALE_PARAM, SCALE_PARAMS, ScaleParam

__all__ = ["MeanField", "LowRank", "Delta", "GUIDES", "GuideKind", "SCALE_PARAMS", "ScaleParam", "DEFAULT_SCALE_PARAM",
           "PosteriorGuide", "ContractGuide", "JointCovariance", "guide_config", "guide_class", "guide_kind",
           "model_init", "elbo_for", "is_point_mass", "is_factorised", "variance_parameters", "joint_covariance"]


@dataclass(frozen=True)
class GuideKind:
    """A guide the recipe can name: ``build(model, recipe)`` makes it; ``uses_prior`` False drops the KL term
    (maximum likelihood). ``elbo`` and ``point_mass`` are the class's (:class:`PosteriorGuide`); giving them
    here only checks them."""

    cls: type
    build: Callable[[Any, Any], Any]
    elbo: type[ELBO] | None = None
    point_mass: bool | None = None
    uses_prior: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        for fact in ("elbo", "point_mass"):
            own = getattr(self.cls, fact, None)
            given = getattr(self, fact)
            if given is not None and own is not None and given != own:
                raise ConfigError(f"{self.cls.__name__}.{fact} is {own!r}, not {given!r}: set it on the guide class")
            object.__setattr__(self, fact, own if own is not None else given)
        if self.point_mass is None:
            object.__setattr__(self, "point_mass", False)


GUIDES: Registry[GuideKind] = Registry("guide")
GUIDES.register("mean-field", GuideKind(
    MeanField, lambda model, r: MeanField(model, init_scale=r.initial_scale, deterministic=r.deterministic,
                                          scale_param=r.scale_param),
    description="independent Normals per weight (analytic KL)"))
GUIDES.register("low-rank", GuideKind(
    LowRank, lambda model, r: LowRank(model, rank=r.rank, init_scale=r.init_scale),
    description="joint Gaussian, low-rank plus diagonal covariance (rank --rank)"))
GUIDES.register("map", GuideKind(Delta, lambda model, r: Delta(model), description="point mass with the prior (MAP)"))
GUIDES.register("mle", GuideKind(Delta, lambda model, r: Delta(model), uses_prior=False,
                                 description="point mass, no prior: deterministic LoRA"))


def guide_kind(guide: Any) -> GuideKind | None:
    """The first registered kind whose class ``guide`` is (None for a user's own guide)."""
    return next((k for k in GUIDES.values() if type(guide) is k.cls), None)


def guide_class(name: str) -> type:
    """The guide class called ``name`` (as saved in a run's config.json): ours, or any subclass of them defined
    in this process."""
    classes = guide_classes()
    if name not in classes:
        raise ValueError(f"unknown guide class {name!r} in the saved run; known: {', '.join(classes)} (import the "
                         "module that defines a guide of your own before loading)")
    return classes[name]


def guide_config(guide: Any) -> dict[str, Any]:
    """``{"class": name, "kwargs": {...}}`` to rebuild ``guide`` on a fresh model."""
    if guide_classes().get(type(guide).__name__) is not type(guide):
        known = ", ".join(guide_classes())
        raise TypeError(f"only guides that follow the guide contract ({known} and their subclasses) can be saved; "
                        f"{type(guide).__name__} cannot (save its state_dict yourself)")
    return {"class": type(guide).__name__, "kwargs": guide.config()}
