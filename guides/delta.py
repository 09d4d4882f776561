"""A point mass: fitted by SVI it is MAP estimation (with the prior) or maximum likelihood (without)."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta

from .common import model_init, scoped_guide
from .contract import ContractGuide

__all__ = ["Delta"]


@scoped_guide
class Delta(ContractGuide, AutoDelta):
    """A point mass at ``loc``: the deterministic baseline."""

    elbo = TraceMeanField_ELBO
    point_mass = True

    def __init__(self, model) -> None:
        super().__init__(model, init_loc_fn=model_init(model))

    @torch.no_grad()
    def marginals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        return {name: (value, None) for name, value in self.median().items()}

    def variance_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def config(self) -> dict[str, Any]:
        return {}
