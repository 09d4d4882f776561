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

from .registry import RecordView, Registry

__all__ = ["Prior", "Normal", "Laplace", "StudentT", "PerSite", "Flat", "FanIn", "Learned", "prior_from_dict",
           "register_prior", "PriorKind", "PRIOR_KINDS", "PRIORS"]


@dataclass(frozen=True)
class PriorKind:
    """A prior, one record: its class (``cls``, rebuilt from a saved ``to_dict()`` of that ``type_name``) and/or
    ``by_name(scale)``, the factory a recipe and the CLI use (``--prior NAME --prior-scale S``)."""

    cls: type["Prior"] | None = None
    by_name: Callable[[float], "Prior"] | None = None


PRIOR_KINDS: Registry[PriorKind] = Registry("prior")
PRIORS = RecordView(PRIOR_KINDS, "by_name", PriorKind)  # name -> factory of one scale (a view of PRIOR_KINDS)
_CLASSES = RecordView(PRIOR_KINDS, "cls", PriorKind, "prior type")


def register_prior(cls: type["Prior"]) -> type["Prior"]:
    """Class decorator: make a prior loadable from its saved ``to_dict()`` form (its record's ``cls``)."""
    _CLASSES.register(cls.type_name, cls, replace=True)
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

    def parameters(self) -> list[torch.Tensor]:
        """Hyperparameters a fit learns (empirical Bayes); empty for fixed priors."""
        return []

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

    def parameters(self) -> list[torch.Tensor]:
        return [p for prior in (self.default, *self.overrides.values()) for p in prior.parameters()]

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


@dataclass(frozen=True)
class Flat(Prior):
    """No prior: an improper flat density (log-density 0). For point-mass sites only, e.g. BLoB's LoRA ``B``
    and head, which are fitted by maximum likelihood."""

    type_name: ClassVar[str] = "flat"

    def distribution(self, name, shape, device=None):
        return dist.ImproperUniform(dist.constraints.real, (), torch.Size(shape))


@dataclass(frozen=True)
class FanIn(Prior):
    """``Normal(0, gain^2 / fan_in)`` per site, ``fan_in`` its last dimension (1 for a vector such as a bias).

    A prior in the weights' own scale (Neal 1996; the scale of Kaiming initialisation): every layer's
    pre-activations keep unit variance a priori, so a LoRA ``A`` of 384 inputs gets a standard deviation
    of ``0.051 * gain``, not ``N(0, 1)``'s 20 times its initial size.
    """

    gain: float = 1.0
    type_name: ClassVar[str] = "fan-in"

    def __post_init__(self) -> None:
        _positive(self.gain, "FanIn prior gain")

    def distribution(self, name, shape, device=None):
        fan_in = shape[-1] if len(shape) > 1 else 1
        return _expand(dist.Normal(_scalar(0.0, device), _scalar(self.gain / fan_in ** 0.5, device)), shape)


@dataclass(frozen=True, eq=False)
class Learned(Prior):
    """Empirical Bayes: ``Normal(0, s_site^2)`` with one scale per site, learned inside the ELBO (type-II
    maximum likelihood), starting at ``init`` (or at ``FanIn`` scales with ``init=None``).

    At the optimum of the ELBO, ``s_site^2 = mean over the site's entries of (loc^2 + scale^2)``.
    :meth:`parameters` are added to the fit's optimiser; the learned values are saved with the run.
    """

    init: float | None = None
    log_scales: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    type_name: ClassVar[str] = "learned"

    def _log_scale(self, name: str, shape: tuple[int, ...], device) -> torch.Tensor:
        if name not in self.log_scales:
            fan_in = shape[-1] if len(shape) > 1 else 1
            start = self.init if self.init is not None else fan_in ** -0.5
            self.log_scales[name] = torch.nn.Parameter(torch.tensor(float(start), device=device).log())
        return self.log_scales[name]

    def distribution(self, name, shape, device=None):
        scale = self._log_scale(name, shape, device).exp()
        return _expand(dist.Normal(torch.zeros((), device=device), scale), shape)

    def scales(self) -> dict[str, float]:
        return {n: float(v.detach().exp()) for n, v in self.log_scales.items()}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.log_scales.values())

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "init": self.init, "sites": list(self.log_scales)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"log_scale/{n}": v.detach() for n, v in self.log_scales.items()}

    @classmethod
    def from_dict(cls, d, tensors):
        return cls(d.get("init"), {n: torch.nn.Parameter(tensors[f"log_scale/{n}"].clone()) for n in d.get("sites", [])})


def _blob_prior(scale: float) -> Prior:
    return PerSite(Flat(), {"*.lora_A": Normal(scale=scale)})


def _function_space_prior(scale: float) -> Prior:
    """``FanIn(scale)`` on the weights the hybrid keeps random (LoRA A, adapter down-projection), flat on the
    rest (their point masses are fitted by maximum likelihood)."""
    return PerSite(Flat(), {"*.lora_A": FanIn(scale), "*.adapter_down": FanIn(scale)})


def prior_from_dict(d: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> Prior:
    """Rebuild a prior saved with ``to_dict()`` (and ``tensors()``)."""
    kind = _CLASSES.get(d.get("type", ""))
    if kind is None:
        raise ValueError(f"unknown prior type {d.get('type')!r}; known: {', '.join(sorted(_CLASSES))}")
    return kind.from_dict(d, tensors or {})


# Every built-in prior, one record each: the names a recipe and the CLI use (in this order), then the classes
# that only load (``per-site`` is built in Python; ``posterior`` and ``hierarchical`` register themselves).
for _name, _kind in {
        "normal": PriorKind(Normal, lambda scale: Normal(scale=scale)),
        "laplace": PriorKind(Laplace, lambda scale: Laplace(scale=scale)),
        "student-t": PriorKind(StudentT, lambda scale: StudentT(scale=scale)),
        "fan-in": PriorKind(FanIn, lambda scale: FanIn(gain=scale)),
        "learned": PriorKind(Learned, lambda scale: Learned(init=scale)),
        "flat": PriorKind(Flat, lambda scale: Flat()),
        "blob": PriorKind(by_name=_blob_prior),  # BLoB: N(0, scale^2) on LoRA A (0.2), nothing on B and the head
        "function-space": PriorKind(by_name=_function_space_prior),
        "per-site": PriorKind(PerSite)}.items():
    PRIOR_KINDS.register(_name, _kind)
