"""Variational families for the PEFT posterior, interchangeable on any of our models.

Each guide is a small subclass of one of Pyro's autoguides that starts where the model says
(LoRA's ``B`` at zero, adapters as the identity; :meth:`BayesianPeftModel.initial_values`) with a
small posterior scale, so the first samples do not swamp the pretrained function.

``GUIDES`` maps the names the recipe and the CLI use to a :class:`GuideKind` (the class, how to
build it from a recipe, its ELBO, whether it is a point mass and whether the prior enters the
fit). A new guide is one file plus one line, ``GUIDES.register("name", GuideKind(...))``.

Example::

    guide = MeanField(model, init_scale=1e-2, deterministic=("*.lora_B",))   # B a point mass
    guide = LowRank(model, rank=8)
    guide = Delta(model)                                                       # MAP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_bhpeft.registry import Registry

from .common import model_init
from .delta import Delta
from .low_rank import LowRank
from .mean_field import SCALE_PARAMS, MeanField

__all__ = ["MeanField", "LowRank", "Delta", "GUIDES", "GuideKind", "SCALE_PARAMS", "guide_config", "guide_class",
           "guide_kind", "model_init"]


@dataclass(frozen=True)
class GuideKind:
    """A guide the recipe can name: ``build(model, recipe)`` makes it; the facts say how it is fitted."""

    cls: type
    build: Callable[[Any, Any], Any]
    elbo: type[ELBO] = Trace_ELBO
    point_mass: bool = False  # every site a point mass: K samples would all be the same
    uses_prior: bool = True  # False: the KL term is dropped (maximum likelihood)
    description: str = ""


GUIDES: Registry[GuideKind] = Registry("guide")
GUIDES.register("mean-field", GuideKind(
    MeanField, lambda model, r: MeanField(model, init_scale=r.initial_scale, deterministic=r.deterministic,
                                          scale_param=r.scale_param),
    TraceMeanField_ELBO, description="independent Normals per weight (analytic KL)"))
GUIDES.register("low-rank", GuideKind(
    LowRank, lambda model, r: LowRank(model, rank=r.rank, init_scale=r.init_scale),
    description="joint Gaussian, low-rank plus diagonal covariance (rank --rank)"))
GUIDES.register("map", GuideKind(Delta, lambda model, r: Delta(model), TraceMeanField_ELBO, point_mass=True,
                                 description="point mass with the prior (MAP)"))
GUIDES.register("mle", GuideKind(Delta, lambda model, r: Delta(model), TraceMeanField_ELBO, point_mass=True,
                                 uses_prior=False, description="point mass, no prior: deterministic LoRA"))


def guide_kind(guide: Any) -> GuideKind | None:
    """The first registered kind whose class ``guide`` is (None for a user's own guide)."""
    return next((k for k in GUIDES.values() if type(guide) is k.cls), None)


def guide_class(name: str) -> type:
    """The registered guide class called ``name`` (as saved in a run's config.json)."""
    classes = {k.cls.__name__: k.cls for k in GUIDES.values()}
    if name not in classes:
        raise ValueError(f"unknown guide class {name!r} in the saved run; known: {', '.join(classes)}")
    return classes[name]


def guide_config(guide: Any) -> dict[str, Any]:
    """``{"class": name, "kwargs": {...}}`` to rebuild ``guide`` on a fresh model."""
    if guide_kind(guide) is None or not hasattr(guide, "config"):
        known = ", ".join(dict.fromkeys(k.cls.__name__ for k in GUIDES.values()))
        raise TypeError(f"only the guides {known} can be saved; {type(guide).__name__} cannot "
                        "(save its state_dict yourself)")
    return {"class": type(guide).__name__, "kwargs": guide.config()}
