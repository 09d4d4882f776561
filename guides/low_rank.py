"""Low-rank-plus-diagonal Gaussian posterior over all sites jointly (Pyro's low-rank autoguide)."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal

from pyro_bhpeft.config import ConfigError

from .common import model_init, scoped_guide
from .contract import ContractGuide, JointCovariance

__all__ = ["LowRank"]


@scoped_guide
class LowRank(ContractGuide, AutoLowRankMultivariateNormal):
    """``q(w) = MVN(loc, D (F F^T + I) D)`` over all sites jointly, with ``F`` of width ``rank``.

    ``rank`` is required: Pyro's default (sqrt of the latent dimension) is enormous at PEFT scale.
    """

    def __init__(self, model, *, rank: int, init_scale: float = 1e-2) -> None:
        if int(rank) < 1:
            raise ConfigError(f"LowRank rank must be a positive integer, got {rank}")
        super().__init__(model, init_loc_fn=model_init(model), init_scale=float(init_scale), rank=int(rank))

    @torch.no_grad()
    def marginals(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        loc, scale = self._loc_scale()
        scales = {site["name"]: s for site, s in self._unpack_latent(scale)}
        return {site["name"]: (v.clone(), scales[site["name"]].clone()) for site, v in self._unpack_latent(loc)}

    @torch.no_grad()
    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loc, cov_factor, cov_diag) of the joint posterior over the packed latent vector."""
        post = self.get_posterior()
        return post.loc.clone(), post.cov_factor.clone(), post.cov_diag.clone()

    def site_slices(self) -> dict[str, tuple[slice, tuple[int, ...]]]:
        """Where each site lies in the packed latent vector, and its shape (Pyro's packing order)."""
        out, pos = {}, 0
        for name, shape in self._unconstrained_shapes.items():
            size = int(torch.Size(shape).numel())
            out[name] = (slice(pos, pos + size), tuple(shape))
            pos += size
        return out

    def joint_covariance(self) -> JointCovariance:
        """``D (F F^T + I) D`` as ``F' F'^T + diag(d)`` over every site, in packing order."""
        _, factor, diag = self.low_rank()
        return JointCovariance(tuple(self.site_slices()), factor, diag)

    def variance_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.named_parameters() if n in ("scale_unconstrained", "cov_factor")]

    def config(self) -> dict[str, Any]:
        return {"rank": self.rank, "init_scale": self._init_scale}
