"""A full-matrix weight delta on a frozen linear layer (kind ``delta``): the task-level weights of ABMLL.

``y = W x + b + Delta x`` with ``Delta`` (out, in) one random site, starting at zero. Its prior in ABMLL is
the hierarchical :class:`~pyro_bhpeft.meta.HierarchicalPrior`, whose mean and scale are low rank (LoRA
factors); the task's own ``Delta`` is full rank but only ever moved a few steps from that prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import _check_layers
from .base import PeftLayer, Site, per_sample, zeros_init
from .kinds import Target, register_peft_kind

__all__ = ["DeltaConfig", "DeltaLinear", "add_deltas"]


@dataclass(frozen=True)
class DeltaConfig:
    """Which linear layers get a full-matrix delta: ``target_modules`` (name suffixes; None: the family's LoRA
    targets) in blocks ``layers`` (None: all)."""

    RENAMED = {"targets": "target_modules"}  # files written before 0.2

    target_modules: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "layers", _check_layers(self.layers, "DeltaConfig"))


class DeltaLinear(PeftLayer):
    """``y = W x + b + Delta x`` with ``Delta`` random, (out, in), zero at the start."""

    kind = "delta"
    batched_samples = True

    def __init__(self, base: nn.Linear, path: str, block: int | None, config: DeltaConfig) -> None:
        super().__init__(path, block)
        self.base = base

    def site_specs(self) -> dict[str, Site]:
        return {"delta": Site((self.base.out_features, self.base.in_features), zeros_init)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self._weights is None:
            return y
        delta = self._weights["delta"]
        x = x.to(delta.dtype)
        if self._samples is not None:  # K draws (K, out, in), each on its block of rows
            out = (per_sample(x, self._samples) @ delta.transpose(1, 2)).reshape(*x.shape[:-1], delta.shape[1])
        else:
            out = x @ delta.T
        return y + out.to(y.dtype)


def add_deltas(target: Target, cfg: DeltaConfig) -> list[PeftLayer]:
    """A delta on every linear layer plain LoRA would wrap."""
    from .lora import wrap_linears

    return wrap_linears(target, cfg, DeltaLinear, "delta")


register_peft_kind("delta", DeltaConfig, add_deltas)
