"""Bayesian LoRA on a frozen linear layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import LoraConfig
from .base import PeftLayer, Site, uniform_init, zeros_init

__all__ = ["LoraLinear"]


class LoraLinear(PeftLayer):
    """``y = W x + b + (alpha / r) * B (A x)``, with ``A`` (r, in) and ``B`` (out, r) random.

    ``A`` starts Kaiming-uniform and ``B`` at zero, as in LoRA, so the wrapped layer starts exact.
    """

    kind = "lora"

    def __init__(self, base: nn.Linear, path: str, block: int | None, config: LoraConfig) -> None:
        super().__init__(path, block)
        self.base = base
        self.r = config.r
        self.scaling = config.scaling

    def site_specs(self) -> dict[str, Site]:
        fan_in, fan_out = self.base.in_features, self.base.out_features
        return {
            "lora_A": Site((self.r, fan_in), uniform_init(1.0 / math.sqrt(fan_in))),
            "lora_B": Site((fan_out, self.r), zeros_init),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self._weights is None:
            return y
        a, b = self._weights["lora_A"], self._weights["lora_B"]
        return y + (x @ a.T) @ (b.T * self.scaling)  # (..., in) -> (..., r) -> (..., out)
