"""What the posterior learned, as ArviZ ``InferenceData``, and whether the variational fit can be trusted.

:func:`to_inference_data` draws ``num_samples`` joint weight samples from the guide and builds:

* ``posterior``: every site with at most ``max_site_size`` entries in full (dims ``<site>_dim_i``),
  and for every site its per-draw RMS (``<site>|rms``), a per-layer summary that stays small;
* ``posterior_predictive`` (``y``, dims ``example``) and ``observed_data`` (``y``), when data is given;
* ``sample_stats``: ``log_p`` (log prior + log likelihood of the data) and ``log_q`` (guide density)
  per draw, whose difference is the importance log-ratio used by :func:`pareto_khat`.

Pareto k-hat (Yao et al. 2018, "Yes, but did it work?"): PSIS on ``log p - log q``; k < 0.7 means
the importance-corrected estimates are trustworthy, k > 0.7 that the guide misses the posterior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyro.poutine as poutine
import torch

__all__ = ["to_inference_data", "pareto_khat", "KHat", "scale_table", "ScaleRow"]


def _draws(posterior, num_samples: int, seed: int) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """Joint draws from the guide and log q of each (0 for point masses)."""
    torch.manual_seed(seed)
    draws, log_q = [], []
    data = posterior.model.dummy_data()
    names = posterior.latent_names
    with torch.no_grad():
        for _ in range(num_samples):
            with poutine.block():
                trace = poutine.trace(posterior.guide).get_trace(*data)
            trace.compute_log_prob()
            draws.append({n: trace.nodes[n]["value"].detach() for n in names})
            log_q.append(float(sum(site["log_prob"].sum() for site in trace.nodes.values()
                                   if site["type"] == "sample" and "log_prob" in site)))
    return draws, np.asarray(log_q)


def _log_joint(model, weights: dict[str, torch.Tensor], batches: list, scale: float) -> tuple[float, list]:
    """log p(w) + scale * sum_b log p(y_b | w), and the per-batch model outputs."""
    log_prior, log_lik, outputs = 0.0, 0.0, []  # the model unweighted: no DataSize or KLWeight around it
    for i, (inputs, labels) in enumerate(batches):
        conditioned = poutine.condition(model, data=weights)
        trace = poutine.trace(conditioned).get_trace(inputs, labels)
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"] and name == "obs":
                log_lik += float(site["log_prob_sum"])
            elif i == 0:
                log_prior += float(site["log_prob_sum"])
        outputs.append(trace.nodes["_RETURN"]["value"])
    return log_prior + scale * log_lik, outputs


def _predictive_draw(model, outputs: list, generator: torch.Generator) -> np.ndarray:
    if not model.predicts_classes:
        mean = torch.cat([o[0] for o in outputs])
        noise = torch.cat([o[1].expand_as(o[0]) for o in outputs])
        return (mean + noise * torch.randn(mean.shape, generator=generator)).numpy()
    probs = torch.cat([o.softmax(-1) for o in outputs])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).numpy()


def to_inference_data(posterior, data: Iterable | None = None, *, num_samples: int = 100,
                      max_site_size: int = 64, num_data: int | None = None, seed: int = 0):
    """ArviZ InferenceData of a fitted posterior (one chain of ``num_samples`` guide draws).

    ``data`` (batches of ``(inputs, labels)``) adds the predictive and observed groups and the
    likelihood in ``log_p``; pass ``num_data`` when ``data`` is a subset of the training data, to
    scale its log-likelihood to the full size (an estimate).
    """
    import arviz as az

    model = posterior.model
    draws, log_q = _draws(posterior, num_samples, seed)
    batches = list(data) if data is not None else [model.dummy_data()]
    n_seen = sum(len(b[1]) for b in batches)
    scale = (num_data / n_seen) if (num_data and data is not None) else (1.0 if data is not None else 0.0)
    gen = torch.Generator().manual_seed(seed)
    log_p, predictive = [], []
    with torch.no_grad():
        for weights in draws:
            lp, outputs = _log_joint(model, weights, batches, scale)
            log_p.append(lp)
            if data is not None:
                predictive.append(_predictive_draw(model, outputs, gen))
    post, dims = {}, {}
    for name in posterior.latent_names:
        stacked = torch.stack([d[name] for d in draws]).numpy()  # (draw, *shape)
        post[f"{name}|rms"] = np.sqrt((stacked.reshape(len(draws), -1) ** 2).mean(1))[None]
        if stacked[0].size <= max_site_size:
            post[name] = stacked[None]
            dims[name] = [f"{name}_dim_{i}" for i in range(stacked.ndim - 1)]
    groups: dict[str, Any] = {"posterior": post, "dims": dims,
                              "sample_stats": {"log_p": np.asarray(log_p)[None], "log_q": log_q[None]}}
    if data is not None:
        labels = torch.cat([b[1] for b in batches]).numpy()
        groups["posterior_predictive"] = {"y": np.stack(predictive)[None]}
        groups["observed_data"] = {"y": labels}
        groups["dims"]["y"] = ["example"]
    return az.from_dict(**groups)


@dataclass(frozen=True)
class KHat:
    """Pareto k-hat of the importance ratios p/q and what it means."""

    k: float
    num_samples: int

    @property
    def reliable(self) -> bool:
        return self.k < 0.7

    def __str__(self) -> str:
        verdict = "trustworthy (k < 0.7)" if self.reliable else "the guide misses the posterior (k >= 0.7)"
        return f"Pareto k-hat {self.k:.2f} over {self.num_samples} draws: {verdict}"


def pareto_khat(idata) -> KHat:
    """PSIS k-hat from ``sample_stats.log_p - sample_stats.log_q`` of :func:`to_inference_data`."""
    import arviz as az

    log_ratio = (idata.sample_stats["log_p"] - idata.sample_stats["log_q"]).values.reshape(-1)
    if np.ptp(log_ratio) == 0:
        return KHat(float("-inf"), len(log_ratio))  # q is the posterior up to a constant
    _, k = az.psislw(log_ratio - log_ratio.max())
    return KHat(float(k), len(log_ratio))


@dataclass(frozen=True)
class ScaleRow:
    site: str
    kind: str
    block: int | None
    posterior_scale: float  # mean posterior standard deviation over the site's entries
    prior_scale: float  # mean prior standard deviation

    @property
    def ratio(self) -> float:
        return self.posterior_scale / self.prior_scale


def scale_table(posterior) -> list[ScaleRow]:
    """Per site: posterior scale vs prior scale. Ratios near 1 stayed at the prior; small ones learned."""
    model = posterior.model
    rows = []
    kinds = {f"{layer.path}.{k}": (layer.kind, layer.block) for layer in model.peft_layers for k in layer.site_specs()}
    for name, marginal in posterior.marginals().items():
        if marginal.scale is None or name not in model.sites:
            continue
        prior = model.prior.distribution(name, model.sites[name].shape)
        prior_sd = float(prior.base_dist.stddev.mean()) if hasattr(prior, "base_dist") else float("nan")
        kind, block = kinds.get(name, ("head", None))
        rows.append(ScaleRow(name, kind, block, float(marginal.scale.mean()), prior_sd))
    return rows
