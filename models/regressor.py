"""Regression: ``y ~ Normal(w . pool(h) + b, sigma)`` with a learned noise scale."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_bhpeft.config import ConfigError, PeftConfig
from pyro_bhpeft.layers import Site
from pyro_bhpeft.layers.base import normal_init, zeros_init
from pyro_bhpeft.priors import Prior

from .base import BayesianPeftModel

__all__ = ["Regressor"]


class Regressor(BayesianPeftModel):
    """Targets are standardised with ``target_loc``/``target_scale``; outputs are in the original units.

    The noise scale is random too: ``log_noise ~ Normal(log noise_prior_scale, 1)`` (site ``log_noise``),
    so every site is real-valued. Pass ``noise_scale`` to fix it instead (a known-noise model).
    """

    task = "regression"
    predicts_classes = False

    def __init__(self, backbone: nn.Module, peft: PeftConfig | None = None, prior: Prior | None = None,
                 *, target_loc: float = 0.0, target_scale: float = 1.0, noise_scale: float | None = None,
                 noise_prior_scale: float = 0.5, pooling: str = "auto") -> None:
        if not target_scale > 0 or (noise_scale is not None and not noise_scale > 0) or not noise_prior_scale > 0:
            raise ConfigError("target_scale, noise_scale and noise_prior_scale must be positive")
        self.target_loc, self.target_scale = float(target_loc), float(target_scale)
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.noise_prior_scale = float(noise_prior_scale)
        super().__init__(backbone, peft, prior, pooling=pooling)

    @classmethod
    def for_task(cls, backbone, peft, prior, spec, targets=None):
        """Targets standardised by the training split's mean and standard deviation."""
        loc = float(targets.mean()) if targets is not None else 0.0
        scale = float(targets.std()) if targets is not None and len(targets) > 1 else 1.0
        return cls(backbone, peft, prior, target_loc=loc, target_scale=scale)

    def head_sites(self) -> dict[str, Site]:
        return {"head.weight": Site((1, self.hidden_size), normal_init(0.02)), "head.bias": Site((1,), zeros_init)}

    def extra_latents(self):
        if self.noise_scale is not None:
            return {}
        covers = getattr(self.prior, "covers", None)  # a posterior-derived prior may know log_noise
        if covers is not None and covers("log_noise"):
            fn = self.prior.distribution("log_noise", (), self._device())
        else:
            fn = dist.Normal(torch.tensor(math.log(self.noise_prior_scale), device=self._device()), 1.0)
        return {"log_noise": pyro.sample("log_noise", fn)}

    def latent_names(self):
        return super().latent_names() + (["log_noise"] if self.noise_scale is None else [])

    def initial_values(self):
        values = super().initial_values()
        if self.noise_scale is None:
            values["log_noise"] = torch.tensor(math.log(self.noise_prior_scale), device=self._device())
        return values

    def outputs(self, weights, features, batch):
        """(mean, noise scale), both in the original units; mean is (batch,)."""
        z = F.linear(features, weights["head.weight"], weights["head.bias"]).squeeze(-1)
        noise = weights["log_noise"].exp() if self.noise_scale is None else features.new_tensor(self.noise_scale)
        return z * self.target_scale + self.target_loc, noise * self.target_scale

    def likelihood(self, outputs, labels):
        mean, noise = outputs
        pyro.sample("obs", dist.Normal(mean, noise), obs=labels)

    def model_kwargs(self):
        return {**super().model_kwargs(), "target_loc": self.target_loc, "target_scale": self.target_scale,
                "noise_scale": self.noise_scale, "noise_prior_scale": self.noise_prior_scale}
