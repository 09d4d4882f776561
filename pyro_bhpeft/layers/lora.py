"""Bayesian LoRA on a frozen linear layer."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, LoraConfig
from .base import PeftLayer, Site, per_sample, uniform_init, zeros_init
from .kinds import Target, register_peft_kind

__all__ = ["LoraLinear", "add_lora", "flipout_lora", "lora_targets", "wrap_linears"]


class LoraLinear(PeftLayer):
    """``y = W x + b + (lora_alpha / r) * B (A x)``, with ``A`` (r, in) and ``B`` (out, r) random.

    ``A`` starts Kaiming-uniform and ``B`` at zero, as in LoRA, so the wrapped layer starts exact.
    """

    kind = "lora"
    batched_samples = True

    def __init__(self, base: nn.Linear, path: str, block: int | None, config: LoraConfig) -> None:
        super().__init__(path, block)
        self.base = base
        self.r = config.r
        self.scaling = config.scaling
        # LoRA dropout (on only in train mode: MC dropout); an Identity keeps the layer's module tree fixed
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()

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
        x = self.dropout(x.to(a.dtype))  # a low-precision backbone: the delta in float32, added in its dtype
        loc = self._weights.get("lora_A:loc")
        if self._samples is not None:  # K draws: (K, r, in) and (K, out, r) on K blocks of rows
            low = per_sample(x, self._samples) @ a.transpose(1, 2)
            delta = (low @ (b.transpose(1, 2) * self.scaling)).reshape(*x.shape[:-1], b.shape[1])
        elif loc is not None:
            delta = flipout_lora(x, loc, a - loc, b, self.scaling, group=self._weights.get("flipout:group", 1),
                                 signs=self._weights.get("flipout:signs"))
        else:
            delta = (x @ a.T) @ (b.T * self.scaling)  # (..., in) -> (..., r) -> (..., out)
        return y + delta.to(y.dtype)


def flipout_lora(x: torch.Tensor, loc: torch.Tensor, noise: torch.Tensor, b: torch.Tensor, scaling: float,
                 group: int = 1, signs: dict | None = None) -> torch.Tensor:
    """The LoRA delta with flipout on ``A`` (Wen et al. 2018, as BLoB uses it).

    One Gaussian draw ``noise = A - loc`` serves the whole batch; each example (the first dimension of
    ``x``) gets its own random signs on the input and rank dimensions, ``((x * r) noise^T) * s``, so
    examples see decorrelated perturbations with the marginal distribution of an independent draw of
    ``A`` each (``noise`` is symmetric), and all tokens of one example share theirs, as one weight draw
    per example would. (BLoB's code draws signs per token; per example costs ``seq`` times fewer random
    numbers and keeps one effective weight per sequence.) Each run of ``group`` consecutive rows of ``x`` is
    one example (a question's choices, folded into the batch) and shares one set of signs, so the softmax
    over its choices is computed under one weight. ``B`` is never flipped. ``signs``: a dict kept across the
    forward passes of one weight binding: the first pass stores its signs there, later passes (the same examples,
    perhaps in groups of rows) reuse them, so an example run in two passes (a question, then its choices) sees
    one perturbation.
    """
    if x.shape[0] % group:
        raise ValueError(f"flipout groups of {group} rows do not divide a batch of {x.shape[0]}")
    shape = (x.shape[0] // group, *([1] * (x.dim() - 2)))  # (examples, 1, ..., 1): broadcast over tokens
    if signs:
        r, s = signs["r"], signs["s"]
        if r.shape[0] != shape[0]:
            raise ValueError(f"flipout signs were drawn for {r.shape[0]} examples, not {shape[0]}")
    else:
        r = torch.empty(*shape, x.shape[-1], dtype=x.dtype, device=x.device).bernoulli_(0.5).mul_(2).sub_(1)
        s = torch.empty(*shape, loc.shape[0], dtype=x.dtype, device=x.device).bernoulli_(0.5).mul_(2).sub_(1)
        if signs is not None:
            signs.update(r=r, s=s)
    if group > 1:
        r, s = r.repeat_interleave(group, dim=0), s.repeat_interleave(group, dim=0)
    low = x @ loc.T + ((x * r) @ noise.T) * s  # (..., r)
    return low @ (b.T * scaling)


def lora_targets(target: Target, targets: tuple[str, ...] | None, layers: tuple[int, ...] | None,
                 kind: str = "LoRA") -> list[tuple[str, int, nn.Linear]]:
    """``(path, block, linear)`` of every ``nn.Linear`` of the chosen blocks whose name ends with one of
    ``targets`` (None: the family's default), or a one-line error naming the layers there are."""
    targets = targets if targets is not None else target.arch.lora_targets
    if not targets:
        raise ConfigError(f"{kind} has no default targets for {type(target.model).__name__}; "
                          "name them, e.g. LoraConfig(target_modules=('q_proj', 'v_proj'))")
    found = [(f"{target.path}.{i}.{rel}", i, module) for i in target.chosen(layers, kind)
             for rel, module in list(target.blocks[i].named_modules())
             if isinstance(module, nn.Linear) and any(rel == t or rel.endswith("." + t) for t in targets)]
    if not found:
        taken = sorted({f"{rel} ({m.kind})" for i in target.chosen(layers, kind) for rel, m in target.blocks[i].named_modules()
                        if isinstance(m, PeftLayer) and any(rel == t or rel.endswith("." + t) for t in targets)})
        if taken:
            raise ConfigError(f"{kind} targets {list(targets)} are already wrapped by another PEFT kind: {taken[:2]}; "
                              f"{kind} replaces LoRA rather than stacking on it: drop lora from the PEFT parts "
                              "(PeftConfig(lora=None, ...), --peft without lora)")
        names = sorted({n.rpartition(".")[2] for n, m in target.blocks[0].named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"{kind} targets {list(targets)} match no linear layer of {type(target.model).__name__}; "
                          f"its linear layers are named {names}")
    return found


def wrap_linears(target: Target, cfg: Any, layer_class: type[PeftLayer], kind: str = "LoRA") -> list[PeftLayer]:
    """Wrap every linear layer :func:`lora_targets` finds for ``cfg`` (its ``target_modules`` and ``layers``) in
    ``layer_class(module, path, block, cfg)``: the add-function of every kind that adapts LoRA's layers."""
    added: list[PeftLayer] = []
    for path, i, module in lora_targets(target, cfg.target_modules, cfg.layers, kind):
        layer = layer_class(module, path, i, cfg)
        target.replace(layer.path, layer)
        added.append(layer)
    return added


def add_lora(target: Target, cfg: LoraConfig) -> list[PeftLayer]:
    """Wrap every ``nn.Linear`` of the chosen blocks whose name ends with one of the targets."""
    return wrap_linears(target, cfg, LoraLinear)


register_peft_kind("lora", LoraConfig, add_lora)
