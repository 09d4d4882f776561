"""Bayesian bottleneck adapter on a block's feed-forward output."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import AdapterConfig, ConfigError
from .base import PeftLayer, Site, per_sample, uniform_init, unwrap, zeros_init
from .kinds import Target, register_peft_kind

__all__ = ["AdapterLayer", "add_adapters"]

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "silu": F.silu}


class AdapterLayer(PeftLayer):
    """``h = f(x); h + W_up act(W_down h + b_down) + b_up`` where ``f`` is the frozen FFN output layer.

    The up-projection starts at zero, so the adapter starts as the identity (Houlsby/Pfeiffer).
    """

    kind = "adapter"
    batched_samples = True

    def __init__(self, base: nn.Module, hidden: int, path: str, block: int | None, config: AdapterConfig) -> None:
        super().__init__(path, block)
        self.base = base  # nn.Linear, or a LoraLinear when LoRA also targets this layer
        self.hidden = hidden
        self.bottleneck = config.bottleneck
        self.activation = _ACTIVATIONS[config.activation]

    def site_specs(self) -> dict[str, Site]:
        hidden, b = self.hidden, self.bottleneck
        return {
            "adapter_down": Site((b, hidden), uniform_init(1.0 / math.sqrt(hidden))),
            "adapter_down_bias": Site((b,), zeros_init),
            "adapter_up": Site((hidden, b), zeros_init),
            "adapter_up_bias": Site((hidden,), zeros_init),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        w = self._weights
        if w is None:
            return h
        x = h.to(w["adapter_down"].dtype)  # computed in float32
        if self._samples is not None:  # K draws, each on its block of rows
            z = self.activation(torch.baddbmm(w["adapter_down_bias"].unsqueeze(1), per_sample(x, self._samples),
                                              w["adapter_down"].transpose(1, 2)))
            up = torch.baddbmm(w["adapter_up_bias"].unsqueeze(1), z, w["adapter_up"].transpose(1, 2))
            return h + up.reshape(h.shape).to(h.dtype)
        z = self.activation(F.linear(x, w["adapter_down"], w["adapter_down_bias"]))
        return h + F.linear(z, w["adapter_up"], w["adapter_up_bias"]).to(h.dtype)


def add_adapters(target: Target, cfg: AdapterConfig) -> list[PeftLayer]:
    """One adapter on the feed-forward output projection of each chosen block."""
    rel = target.arch.ffn_output
    added: list[PeftLayer] = []
    for i in target.chosen(cfg.layers, "adapter"):
        module = dict(target.blocks[i].named_modules()).get(rel) if rel else None
        if not isinstance(unwrap(module), nn.Linear):
            raise ConfigError(f"{type(target.model).__name__} has no linear feed-forward output "
                              f"({rel or 'none in its architecture entry'}) in block {i}; drop 'adapter' "
                              "from the PEFT parts or fix its entry in pyro_bhpeft.layers.arch.ARCHITECTURES")
        layer = AdapterLayer(module, unwrap(module).out_features, f"{target.path}.{i}.{rel}", i, cfg)
        target.replace(layer.path, layer)
        added.append(layer)
    return added


register_peft_kind("adapter", AdapterConfig, add_adapters)
