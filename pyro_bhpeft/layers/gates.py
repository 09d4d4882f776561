"""LoRA with Bayesian rank and quantization gates (after Meo et al. 2024, "Bayesian-LoRA"; no public code).

Each wrapped linear layer gets LoRA factors ``A`` (r_max, in) and ``B`` (out, r_max) and three groups of gates,
all ``pyro.sample`` sites:

* ``rank_gate`` (r_max,): one gate per rank-one component ``B[:, k] A[k, :]``;
* ``bit_gate_A``, ``bit_gate_B`` (levels - 1,): nested residual quantization of each factor (the Bayesian
  Bits construction): the weight at 2 bits, plus a gated residual for each further level (4, 8 bits), plus a
  last gated residual that restores full precision ("16" bits). A level's gate only counts when every lower
  one is open.

Design choices (documented because the paper has no code):

* A gate's site is a real **logit** ``g``; the gate is the hard-concrete map ``clamp(sigmoid(g / t) (1.2) - 0.1,
  0, 1)`` (stretch -0.1..1.1, Louizos et al. 2018), so it is exactly 0 or 1 over most of its range and the
  existing guides (mean-field Normal on ``g``; point masses) fit, save, predict and diagnose gates unchanged.
* While fitting (gradients on), each forward adds the hard concrete's own **logistic noise** to every gate
  logit (``noise="logistic"``; Louizos et al. 2018): a gate of logit ``g`` is then exactly 0 with probability
  about ``sigmoid(-g)``, so the likelihood sees components really dropped and defends those it needs.
  Without it (``noise="none"``, the first version) the posterior of a logit collapsed onto its N(-1, 1)
  prior, every gate sat in the soft region at about 0.2, and the point-mass ``B`` grew to compensate (a soft
  gate and the scale of its column of ``B`` are not identifiable), so the deployed, thresholded network
  dropped everything the fitted one used (R8: validation accuracy 94.8 % with the soft gates at the
  posterior mean, 90.8 % and a mean top probability of 0.49 with them thresholded). Prediction (no
  gradients) uses each draw's noise-free gate, the hard concrete's test-time estimator.
* The gates' prior is ``Normal(rank_prior, 1)`` / ``Normal(bit_prior, 1)`` on the logit, fixed by the config
  (a negative mean prefers fewer components and fewer bits); it is the site's own prior, whatever prior the
  model's other weights have. ``rank_prior`` +1 (bits -1) was chosen on validation among -1, 0 and +1
  (``docs/selection-gates``); in these short fits the gate logits end near their prior mean, so the prior
  mean, more than the data, sets the deployed rank.
* Quantization is symmetric per matrix over ``[-a, a]``, ``a = max |W|``; level ``b`` has step
  ``s_b = s_prev / (2^prev + 1)`` (``s_2 = 2a / 3``), rounding with the straight-through gradient.
* Gates start open (logit 3): an untrained gated layer is plain LoRA, bit for bit.
* For deployment, :func:`hard_gates` thresholds every gate at 0.5 (open or closed, no relaxation).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..config import ConfigError, _check_layers, _positive_int
from .base import PeftLayer, Site, uniform_init, zeros_init
from .kinds import Target, register_peft_kind

__all__ = ["GATE_SITES", "GatedLoraConfig", "GatedLoraLinear", "add_gated_lora", "gate_value", "quantize_nested", "hard_gates",
           "gate_summary", "bit_operations"]

GATE_SITES = ("rank_gate", "bit_gate_A", "bit_gate_B")  # the local names of a gated layer's gate logits
STRETCH = (-0.1, 1.1)
OPEN_LOGIT = 3.0
NOISES = ("logistic", "none")
ACTIVATION_BITS = 16


@dataclass(frozen=True)
class GatedLoraConfig:
    """Gated LoRA: rank ``r`` at most, ``lora_alpha`` as LoRA's; ``bits`` the quantization levels (the last is full
    precision); ``rank_prior`` / ``bit_prior`` the prior means of the gate logits; ``temperature`` the gates'."""

    RENAMED = {"alpha": "lora_alpha", "targets": "target_modules"}  # files written before 0.2

    r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    bits: tuple[int, ...] = (2, 4, 8, 16)
    rank_prior: float = 1.0  # chosen on validation (docs/selection-gates); the first version had -1
    bit_prior: float = -1.0
    temperature: float = 2.0 / 3.0
    noise: str = "logistic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", _positive_int(self.r, "gated LoRA rank r", "r=8"))
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        bits = tuple(int(b) for b in self.bits)
        if len(bits) < 2 or bits[0] != 2 or any(b2 != 2 * b1 for b1, b2 in zip(bits, bits[1:])):
            raise ConfigError(f"gated LoRA bits must double from 2 (e.g. (2, 4, 8, 16)), got {list(self.bits)}")
        object.__setattr__(self, "bits", bits)
        if not self.temperature > 0 or self.lora_alpha <= 0:
            raise ConfigError("gated LoRA temperature and lora_alpha must be positive")
        object.__setattr__(self, "layers", _check_layers(self.layers, "GatedLoraConfig"))
        if self.noise not in NOISES:
            raise ConfigError(f"gated LoRA noise must be one of {', '.join(NOISES)}, got {self.noise!r}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


def gate_value(logit: torch.Tensor, temperature: float, hard: bool = False) -> torch.Tensor:
    """The gate in [0, 1] of a logit: the stretched, clamped sigmoid; ``hard``: thresholded at 0.5."""
    low, high = STRETCH
    gate = (torch.sigmoid(logit / temperature) * (high - low) + low).clamp(0.0, 1.0)
    return (gate > 0.5).to(logit.dtype) if hard else gate


def logistic_noise(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Standard logistic draws ``log u - log(1 - u)``, ``u ~ U(0, 1)``: the hard concrete's noise."""
    u = torch.rand(shape, dtype=like.dtype, device=like.device).clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def _round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()  # straight-through


def quantize_levels(w: torch.Tensor, bits: tuple[int, ...]) -> list[torch.Tensor]:
    """``w`` at each quantized level (all of ``bits`` but the last), coarsest first, each the previous plus its
    rounded residual (nested residual quantization)."""
    a = w.detach().abs().max().clamp_min(1e-12)
    step = 2 * a / (2 ** bits[0] - 1)
    levels = [step * _round(w / step)]
    for prev in bits[:-2]:
        step = step / (2 ** prev + 1)
        levels.append(levels[-1] + step * _round((w - levels[-1]) / step))
    return levels


def quantize_nested(w: torch.Tensor, gates: torch.Tensor, bits: tuple[int, ...]) -> torch.Tensor:
    """``w`` through gated levels: ``gates[j]`` opens level ``j + 1`` (the last level is full precision). Written
    as ``w`` minus what each closed level leaves out, so all gates open give ``w`` exactly."""
    levels = [*quantize_levels(w, bits), w]
    out, opened = w, torch.ones((), dtype=w.dtype, device=w.device)
    for j, gate in enumerate(gates):  # level j is kept and level j + 1 dropped with weight opened * (1 - gate)
        out = out - opened * (1 - gate) * (w - levels[j])
        opened = opened * gate
    return out


class GatedLoraLinear(PeftLayer):
    """``y = W x + b + scaling * B_q diag(z) A_q x``: LoRA with rank gates ``z`` and quantized factors."""

    kind = "gated-lora"

    def __init__(self, base: nn.Linear, path: str, block: int | None, config: GatedLoraConfig) -> None:
        super().__init__(path, block)
        self.base, self.config = base, config
        self.hard = False  # thresholded gates (deployment), see hard_gates

    def site_specs(self) -> dict[str, Site]:
        from ..priors import Normal

        cfg, fan_in, fan_out = self.config, self.base.in_features, self.base.out_features
        levels = len(cfg.bits) - 1
        open_init = lambda shape: torch.full(shape, OPEN_LOGIT)  # noqa: E731
        return {
            "lora_A": Site((cfg.r, fan_in), uniform_init(1.0 / math.sqrt(fan_in))),
            "lora_B": Site((fan_out, cfg.r), zeros_init),
            "rank_gate": Site((cfg.r,), open_init, prior=Normal(1.0, cfg.rank_prior)),
            "bit_gate_A": Site((levels,), open_init, prior=Normal(1.0, cfg.bit_prior)),
            "bit_gate_B": Site((levels,), open_init, prior=Normal(1.0, cfg.bit_prior)),
        }

    def gates(self, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t, noisy = self.config.temperature, self.config.noise == "logistic" and torch.is_grad_enabled() and not self.hard
        return {k: gate_value(w[k] + logistic_noise(w[k].shape, w[k]) if noisy else w[k], t, self.hard)
                for k in GATE_SITES}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        w = self._weights
        if w is None:
            return y
        z = self.gates(w)
        a = quantize_nested(w["lora_A"], z["bit_gate_A"], self.config.bits)
        b = quantize_nested(w["lora_B"], z["bit_gate_B"], self.config.bits)
        x = x.to(a.dtype)
        delta = ((x @ a.T) * z["rank_gate"]) @ (b.T * self.config.scaling)
        return y + delta.to(y.dtype)


def add_gated_lora(target: Target, cfg: GatedLoraConfig) -> list[PeftLayer]:
    """Gated LoRA on the same linear layers plain LoRA would wrap."""
    from .lora import wrap_linears

    return wrap_linears(target, cfg, GatedLoraLinear, "gated LoRA")


@contextlib.contextmanager
def hard_gates(model: Any) -> Iterator[None]:
    """Inside the block every gate of ``model`` is thresholded at 0.5: the deployed, deterministic network."""
    layers = [layer for layer in getattr(model, "peft_layers", []) if isinstance(layer, GatedLoraLinear)]
    try:
        for layer in layers:
            layer.hard = True
        yield
    finally:
        for layer in layers:
            layer.hard = False


def _effective_bits(gates: torch.Tensor, bits: tuple[int, ...]) -> int:
    kept = bits[0]
    for gate, level in zip(gates, bits[1:]):
        if gate <= 0.5:
            break
        kept = level
    return kept


def gate_summary(model: Any, locs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Per gated layer, from the gate logits in ``locs`` (e.g. the posterior means): the rank kept, and the bits
    of A and B (a gate counts as open above 0.5)."""
    rows = []
    for layer in getattr(model, "peft_layers", []):
        if not isinstance(layer, GatedLoraLinear):
            continue
        t, bits = layer.config.temperature, layer.config.bits
        gate = {k: gate_value(locs[f"{layer.path}.{k}"], t) for k in GATE_SITES}
        rows.append({"layer": layer.path, "block": layer.block, "in": layer.base.in_features,
                     "out": layer.base.out_features, "rank": int((gate["rank_gate"] > 0.5).sum()),
                     "bits_A": _effective_bits(gate["bit_gate_A"], bits),
                     "bits_B": _effective_bits(gate["bit_gate_B"], bits)})
    return rows


def bit_operations(rows: list[dict[str, Any]], activation_bits: int = ACTIVATION_BITS) -> int:
    """Bit operations per token of the adapted paths: ``rank * (in * bits_A + out * bits_B) * activation_bits``
    summed over layers (a multiply-accumulate of a b_w-bit weight and a b_a-bit activation costs b_w * b_a)."""
    return sum(r["rank"] * (r["in"] * r["bits_A"] + r["out"] * r["bits_B"]) * activation_bits for r in rows)


register_peft_kind("gated-lora", GatedLoraConfig, add_gated_lora)
