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

__all__ = ["Site", "PeftLayer", "unwrap", "zeros_init", "uniform_init", "normal_init", "per_sample"]

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


def per_sample(x: torch.Tensor, samples: int) -> torch.Tensor:
    """Rows of ``x`` (``samples * n``, ..., d), sample-major, as (``samples``, ``n * ...``, d) for a batched
    matmul with per-sample weights (samples, d, d')."""
    return x.reshape(samples, -1, x.shape[-1])


class PeftLayer(nn.Module):
    """Base class: ``path`` is the module path in the backbone, used to name the layer's sites.

    A layer that sets ``batched_samples`` also accepts ``K`` stacked draws at once: :meth:`bind` with
    ``samples=K`` gives every tensor a leading ``K`` dimension, and the batch's rows are ``K`` copies of the
    inputs, sample-major (rows ``k * n .. (k + 1) * n - 1`` see draw ``k``).
    """

    kind: ClassVar[str] = ""
    batched_samples: ClassVar[bool] = False

    def __init__(self, path: str, block: int | None) -> None:
        super().__init__()
        self.path = path
        self.block = block  # index of the transformer block, if any
        self._weights: Mapping[str, torch.Tensor] | None = None
        self._samples: int | None = None  # K stacked draws bound at once (batched_samples layers only)

    def site_specs(self) -> dict[str, Site]:
        """Local site names (e.g. ``lora_A``) and their specs."""
        raise NotImplementedError

    def sites(self) -> dict[str, Site]:
        """Full site names, ``<path>.<local>``."""
        return {f"{self.path}.{k}": v for k, v in self.site_specs().items()}

    def bind(self, weights: Mapping[str, torch.Tensor] | None, samples: int | None = None) -> None:
        """Set (or clear, with None) the sampled tensors used by the next forward passes; ``samples=K``: each
        tensor stacks ``K`` draws (see the class docstring)."""
        if samples is not None and not self.batched_samples:
            raise TypeError(f"{type(self).__name__} does not take stacked posterior draws")
        self._weights = weights
        self._samples = samples if weights is not None else None

    def regroup(self, group: int) -> None:
        """Between the passes of one binding: the next pass has ``group`` rows per example, which flipout's
        perturbation is shared by (its sign memo, bound with the tensors, carries over)."""
        if self._weights is not None and "flipout:group" in self._weights:
            self._weights = {**self._weights, "flipout:group": group}

    def remove(self, model: nn.Module) -> None:
        """Take this layer out of ``model`` again: put the wrapped module ``base`` back at ``path``."""
        parent, _, child = self.path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, self.base)


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The frozen module itself, also when another PEFT layer already wraps it."""
    while isinstance(module, PeftLayer) and hasattr(module, "base"):
        module = module.base
    return module
