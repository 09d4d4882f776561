"""Priors over the PEFT and head weights: small value objects the user can swap.

A prior answers one question: which distribution does the site ``name`` of shape ``shape`` have?
Its event shape is ``shape``, so each site is one ``pyro.sample`` statement.

Example::

    from pyro_bhpeft import priors
    prior = priors.PerSite(priors.Normal(scale=1.0),
                           {"*.prefix": priors.Normal(scale=0.1), "head.*": priors.StudentT(df=3.0)})

A prior built from a fitted posterior (:func:`pyro_bhpeft.posterior_prior`) plugs into the same slot.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import pyro.distributions as dist
import torch

from .registry import Registry

__all__ = ["Prior", "Normal", "Laplace", "StudentT", "PerSite", "prior_from_dict", "register_prior", "PRIORS"]

_REGISTRY: dict[str, type["Prior"]] = {}


def register_prior(cls: type["Prior"]) -> type["Prior"]:
    """Class decorator: make a prior loadable from its saved ``to_dict()`` form."""
    _REGISTRY[cls.type_name] = cls
    return cls


class Prior(ABC):
    """Base class. Subclasses implement :meth:`distribution` and (de)serialisation."""

    type_name: ClassVar[str] = ""

    @abstractmethod
    def distribution(self, name: str, shape: tuple[int, ...], device: torch.device | None = None
                     ) -> dist.TorchDistribution:
        """The prior of site ``name``, with event shape ``shape``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tensors go to :meth:`tensors`)."""
        return {"type": self.type_name, **{k: v for k, v in vars(self).items()}}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors that do not fit in JSON (posterior-derived priors); empty for simple priors."""
        return {}

    @classmethod
    def from_dict(cls, d: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "Prior":
        return cls(**{k: v for k, v in d.items() if k != "type"})


def _expand(base: dist.TorchDistribution, shape: tuple[int, ...]) -> dist.TorchDistribution:
    return base.expand(torch.Size(shape)).to_event(len(shape))


def _scalar(value: float, device: torch.device | None) -> torch.Tensor:
    return torch.tensor(float(value), device=device)


def _positive(value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be positive, got {value}")


@register_prior
@dataclass(frozen=True)
class Normal(Prior):
    """Independent ``Normal(loc, scale)`` on every entry."""

    scale: float = 1.0
    loc: float = 0.0
    type_name: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        _positive(self.scale, "Normal prior scale")

    def distribution(self, name, shape, device=None):
        return _expand(dist.Normal(_scalar(self.loc, device), _scalar(self.scale, device)), shape)


@register_prior
@dataclass(frozen=True)
class Laplace(Prior):
    """Independent ``Laplace(loc, scale)``: sparsity-favouring."""

    scale: float = 1.0
    loc: float = 0.0
    type_name: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        _positive(self.scale, "Laplace prior scale")

    def distribution(self, name, shape, device=None):
        return _expand(dist.Laplace(_scalar(self.loc, device), _scalar(self.scale, device)), shape)


@register_prior
@dataclass(frozen=True)
class StudentT(Prior):
    """Independent Student-t with ``df`` degrees of freedom: heavy tails."""

    df: float = 3.0
    scale: float = 1.0
    loc: float = 0.0
    type_name: ClassVar[str] = "student-t"

    def __post_init__(self) -> None:
        _positive(self.scale, "Student-t prior scale")
        _positive(self.df, "Student-t degrees of freedom")

    def distribution(self, name, shape, device=None):
        base = dist.StudentT(_scalar(self.df, device), _scalar(self.loc, device), _scalar(self.scale, device))
        return _expand(base, shape)


@register_prior
@dataclass(frozen=True)
class PerSite(Prior):
    """``default`` everywhere except sites matching a glob pattern in ``overrides`` (first match wins)."""

    default: Prior = field(default_factory=Normal)
    overrides: dict[str, Prior] = field(default_factory=dict)
    type_name: ClassVar[str] = "per-site"

    def resolve(self, name: str) -> Prior:
        for pattern, prior in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return prior
        return self.default

    def distribution(self, name, shape, device=None):
        return self.resolve(name).distribution(name, shape, device)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "default": self.default.to_dict(),
                "overrides": {k: v.to_dict() for k, v in self.overrides.items()}}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"default/{k}": v for k, v in self.default.tensors().items()}
        for i, prior in enumerate(self.overrides.values()):
            out.update({f"override{i}/{k}": v for k, v in prior.tensors().items()})
        return out

    @classmethod
    def from_dict(cls, d, tensors):
        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        overrides = {p: prior_from_dict(o, sub(f"override{i}/")) for i, (p, o) in enumerate(d["overrides"].items())}
        return cls(prior_from_dict(d["default"], sub("default/")), overrides)


def prior_from_dict(d: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Prior:
    """Rebuild a prior saved with ``to_dict()`` (and ``tensors()``)."""
    kind = _REGISTRY.get(d.get("type", ""))
    if kind is None:
        raise ValueError(f"unknown prior type {d.get('type')!r}; known: {', '.join(sorted(_REGISTRY))}")
    return kind.from_dict(d, tensors or {})


# The priors a recipe and the CLI name (``--prior NAME --prior-scale S``): name -> factory of one scale.
PRIORS: Registry[Callable[[float], Prior]] = Registry("prior")
PRIORS.register("normal", lambda scale: Normal(scale=scale))
PRIORS.register("laplace", lambda scale: Laplace(scale=scale))
PRIORS.register("student-t", lambda scale: StudentT(scale=scale))
