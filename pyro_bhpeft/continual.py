"""Bayesian dynamic fine-tuning: the posterior of one round becomes the prior of the next.

:func:`posterior_prior` is a pure function of a fitted :class:`~pyro_bhpeft.Posterior`:

* mean-field  -> an independent Normal per site, ``N(loc_s, temper * scale_s^2)``;
* low-rank    -> a low-rank multivariate Normal over the sites it covered, keeping the learned
  correlations, with covariance ``temper * (F F^T + diag(d))``;
* point mass  -> ``N(loc_s, point_scale^2)``.

``temper >= 1`` is a forgetting factor: it multiplies every prior variance, so the new round can move
further from the old posterior. Sites the old posterior did not have (a new head for new labels)
fall back to ``base``, the prior the first round used by default; so do sites whose shape changed.

Example::

    prior = posterior_prior(round1.posterior, temper=1.0)
    model2 = SequenceClassifier(load_backbone("minilm").model, peft, prior, num_labels=2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import pyro.distributions as dist
import torch

from .posterior import Posterior
from .priors import Normal, Prior, prior_from_dict, register_prior

__all__ = ["PosteriorPrior", "posterior_prior"]


@register_prior
@dataclass(frozen=True, eq=False)
class PosteriorPrior(Prior):
    """Per-site Normal priors from a posterior, optionally joined by a low-rank covariance.

    With ``cov_factor`` set, the sites in ``joint`` (in packing order) share the density
    ``LowRankMVN(loc, cov_factor, cov_diag)``: each such site gets a flat per-site distribution and the
    model adds the joint log-density once (:meth:`joint_log_prob`).
    """

    locs: Mapping[str, torch.Tensor]
    scales: Mapping[str, torch.Tensor]
    base: Prior = field(default_factory=Normal)
    joint: tuple[str, ...] = ()
    cov_factor: torch.Tensor | None = None
    cov_diag: torch.Tensor | None = None
    type_name: ClassVar[str] = "posterior"

    def parameters(self) -> list[torch.Tensor]:
        return self.base.parameters()  # learned scales of the sites the posterior lacks (a new head)

    def covers(self, name: str) -> bool:
        return name in self.locs

    def _joint_fits(self, name: str, shape) -> bool:
        return name in self.joint and tuple(self.locs[name].shape) == tuple(shape)

    def distribution(self, name, shape, device=None):
        if self._joint_fits(name, shape):
            return dist.ImproperUniform(dist.constraints.real, (), torch.Size(shape))
        if name not in self.locs:
            return self.base.distribution(name, shape, device)
        loc, scale = self.locs[name].to(device), self.scales[name].to(device)
        if tuple(loc.shape) != tuple(shape):  # e.g. a head for a new label set: start from the base prior
            return self.base.distribution(name, shape, device)
        return dist.Normal(loc, scale).to_event(len(shape))

    def joint_log_prob(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """log N(w_joint | loc, F F^T + diag(d)) over the jointly modelled sites, or None.

        A joint site whose shape changed (a head for another label set) takes its base prior instead, and
        the joint density is the exact marginal over the sites that kept their shape (the matching rows of
        ``loc``, ``F`` and ``d``).
        """
        if not self.joint:
            return None
        keep, index, start = [], [], 0
        for name in self.joint:
            size = self.locs[name].numel()
            if name in weights and self._joint_fits(name, weights[name].shape):
                keep.append(name)
                index.append(torch.arange(start, start + size))
            start += size
        if not keep:
            return None
        w = torch.cat([weights[n].reshape(-1) for n in keep])
        rows = torch.cat(index).to(w.device)
        loc = torch.cat([self.locs[n].reshape(-1) for n in keep]).to(w.device)
        factor, diag = self.cov_factor.to(w.device)[rows], self.cov_diag.to(w.device)[rows]
        return dist.LowRankMultivariateNormal(loc, factor, diag).log_prob(w)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "sites": list(self.locs), "joint": list(self.joint),
                "base": self.base.to_dict()}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"loc/{n}": v for n, v in self.locs.items()}
        out.update({f"scale/{n}": v for n, v in self.scales.items()})
        if self.cov_factor is not None:
            out["cov_factor"], out["cov_diag"] = self.cov_factor, self.cov_diag
        out.update({f"base/{k}": v for k, v in self.base.tensors().items()})
        return out

    @classmethod
    def from_dict(cls, d, tensors):
        base = prior_from_dict(d["base"], {k[5:]: v for k, v in tensors.items() if k.startswith("base/")})
        return cls({n: tensors[f"loc/{n}"] for n in d["sites"]}, {n: tensors[f"scale/{n}"] for n in d["sites"]},
                   base, tuple(d["joint"]), tensors.get("cov_factor"), tensors.get("cov_diag"))


def posterior_prior(posterior: Posterior, *, temper: float = 1.0, point_scale: float = 0.01,
                    base: Prior | None = None) -> PosteriorPrior:
    """The prior for the next round, from ``posterior`` (a pure function: nothing is modified).

    ``temper`` multiplies every variance (1 = exact Bayesian updating); ``point_scale`` is the
    standard deviation put around point-mass sites; ``base`` (default: the posterior's own prior)
    covers sites the posterior does not have.
    """
    from pyro_bhpeft.guides import joint_covariance

    if not temper > 0 or not point_scale > 0:
        raise ValueError(f"temper and point_scale must be positive, got {temper} and {point_scale}")
    base = base if base is not None else _root_prior(posterior.model.prior)
    root = temper ** 0.5
    locs, scales = {}, {}
    for name, marginal in posterior.marginals().items():
        locs[name] = marginal.loc.detach().clone()
        scale = marginal.scale if marginal.scale is not None else torch.full_like(marginal.loc, point_scale)
        scales[name] = scale.detach().clone() * root
    joint = joint_covariance(posterior.guide)  # a low-rank guide's correlations across sites
    if joint is not None:
        return PosteriorPrior(locs, scales, base, joint.sites, joint.factor * root, joint.diag * temper)
    return PosteriorPrior(locs, scales, base)


def _root_prior(prior: Prior) -> Prior:
    """The first round's prior: follow the chain of posterior priors back to its base."""
    while isinstance(prior, PosteriorPrior):
        prior = prior.base
    return prior
