"""The contract every Bayesian PEFT layer follows.

A layer wraps a frozen module of the backbone (or hooks into it) and adds a delta. It owns no
parameters: its random tensors are declared once, as :class:`Site` specs, and the model samples them
(``pyro.sample``) and *binds* the sampled values before each forward pass. The same layer therefore
serves every guide, including a point mass (the deterministic baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

__all__ = ["Site", "PeftLayer", "unwrap", "zeros_init", "uniform_init", "normal_init"]

Init = Callable[[tuple[int, ...]], torch.Tensor]


def zeros_init(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape)


def uniform_init(bound: float) -> Init:
    """U(-bound, bound): LoRA's A and the adapter's down-projection (Kaiming-uniform, a=sqrt(5))."""
    return lambda shape: torch.empty(shape).uniform_(-bound, bound)


def normal_init(std: float) -> Init:
    return lambda shape: torch.randn(shape) * std


@dataclass(frozen=True)
class Site:
    """A random tensor of a layer: its shape, how to initialise the guide's location, and (rarely) a prior of
    its own that replaces the model's for this site (the gates of gated LoRA)."""

    shape: tuple[int, ...]
    init: Init = zeros_init
    prior: Any = None


class PeftLayer(nn.Module):
    """Base class: ``path`` is the module path in the backbone, used to name the layer's sites."""

    kind: ClassVar[str] = ""

    def __init__(self, path: str, block: int | None) -> None:
        super().__init__()
        self.path = path
        self.block = block  # index of the transformer block, if any
        self._weights: Mapping[str, torch.Tensor] | None = None

    def site_specs(self) -> dict[str, Site]:
        """Local site names (e.g. ``lora_A``) and their specs."""
        raise NotImplementedError

    def sites(self) -> dict[str, Site]:
        """Full site names, ``<path>.<local>``."""
        return {f"{self.path}.{k}": v for k, v in self.site_specs().items()}

    def bind(self, weights: Mapping[str, torch.Tensor] | None) -> None:
        """Set (or clear, with None) the sampled tensors used by the next forward passes."""
        self._weights = weights

    def remove(self, model: nn.Module) -> None:
        """Take this layer out of ``model`` again: put the wrapped module ``base`` back at ``path``."""
        parent, _, child = self.path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, self.base)


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The frozen module itself, also when another PEFT layer already wraps it."""
    while isinstance(module, PeftLayer) and hasattr(module, "base"):
        module = module.base
    return module
