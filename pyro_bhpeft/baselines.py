"""The non-variational baselines the comparison harness scores next to BH-PEFT.

All of them work on our own models and loaders and give :class:`~pyro_bhpeft.predict.ClassPrediction`
values, so every method is measured with the same metrics:

* :func:`mc_dropout_predict` -- MC dropout: a point estimate trained with the backbone's dropout on
  (``Recipe(dropout=True)``), predicted by averaging ``K`` passes with dropout still on (Gal and
  Ghahramani, 2016).
* :func:`ensemble_predict` -- a deep ensemble: the average of independently seeded point estimates
  (Lakshminarayanan et al., 2017); mutual information is the members' disagreement.
* :func:`laplace_posterior` -- post-hoc Laplace around a point estimate (the LoRA and head weights):
  a diagonal generalised Gauss-Newton (GGN) precision plus an isotropic prior precision chosen by
  maximising the Laplace marginal likelihood (MacKay 1992; Immer et al. 2021; Laplace-LoRA, Yang
  et al. 2024, with a diagonal instead of a Kronecker-factored GGN). It returns an ordinary
  mean-field :class:`~pyro_bhpeft.posterior.Posterior`, so it is sampled, saved and diagnosed like
  any other; :func:`linearised_predict` gives its linearised (GLM) predictive.
* :func:`fit_temperature` / :func:`tempered` -- temperature scaling (Guo et al., 2017) fitted by
  NLL on a validation split.
* :class:`PeftLoraModel` / :func:`train_peft_lora` -- the same LoRA, head and pooling trained
  through the Hugging Face ``peft`` library with plain cross-entropy: the external reference that
  our maximum-likelihood LoRA must match.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .backbone import dropout_active
from .config import ConfigError, LoraConfig
from .posterior import Posterior
from .predict import ClassPrediction, class_prediction, predict

__all__ = ["mc_dropout_predict", "ensemble_predict", "laplace_posterior", "LaplaceFit", "ggn_diagonal",
           "linearised_predict",
           "fit_temperature", "tempered", "PeftLoraModel", "train_peft_lora", "peft_predict"]


def _classification_only(model: Any, what: str) -> None:
    if model.task not in ("classification", "multiple_choice"):
        raise ConfigError(f"{what} supports classification and multiple choice, not {model.task}")


# ---- MC dropout and ensembles -----------------------------------------------------------------------
@torch.no_grad()
def mc_dropout_predict(posterior: Posterior, data: Iterable, *, num_samples: int, seed: int = 0) -> ClassPrediction:
    """``num_samples`` forward passes of the posterior mean with the backbone's dropout on, averaged."""
    if num_samples < 1:
        raise ValueError(f"MC dropout needs num_samples >= 1, got {num_samples}")
    model = posterior.model
    _classification_only(model, "MC dropout")
    weights = posterior.mean()
    torch.manual_seed(seed)
    probs, labels = [], []
    with dropout_active(model):
        for inputs, y in data:
            probs.append(torch.stack([model.run(weights, inputs).softmax(-1) for _ in range(num_samples)]))
            labels.append(y)
    return class_prediction(torch.cat(probs, dim=1), torch.cat(labels))


def ensemble_predict(members: Sequence[Posterior], data: Iterable) -> ClassPrediction:
    """The average predictive of point-estimate ``members`` (each predicts once with its mean)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    preds = [predict(m, data, num_samples=0) for m in members]
    return class_prediction(torch.stack([p.probs for p in preds]), preds[0].labels)


# ---- Laplace ----------------------------------------------------------------------------------------
def _example_jacobians(model: Any, weights: dict[str, torch.Tensor], data: Iterable, max_examples: int | None,
                       desc: str, progress: bool):
    """For each example (one at a time, at most ``max_examples``): its logits (C,), label, and the
    gradient of each finite logit with respect to every weight (one backward pass per class).
    Yields ``(logits, label, grads)`` with ``grads[c][k]`` the gradient of logit ``c`` for weight ``k``
    (None where a weight does not reach the output)."""
    names = list(weights)
    params = [weights[n].detach().clone().requires_grad_(True) for n in names]
    bar = tqdm(total=max_examples, desc=desc, unit="example", disable=not progress)
    seen = 0
    for inputs, labels in data:
        for i in range(next(iter(inputs.values())).shape[0]):
            if max_examples is not None and seen >= max_examples:
                bar.close()
                return
            logits = model.run(dict(zip(names, params)), {k: v[i:i + 1] for k, v in inputs.items()})[0]
            grads = [torch.autograd.grad(logits[c], params, retain_graph=True, allow_unused=True)
                     if torch.isfinite(logits[c]) else None for c in range(len(logits))]
            yield logits.detach(), labels[i], grads
            seen += 1
            bar.update(1)
    bar.close()


def ggn_diagonal(model: Any, weights: dict[str, torch.Tensor], data: Iterable, *, max_examples: int,
                 progress: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    """Sum over examples of the diagonal GGN of the negative log-likelihood at ``weights``.

    For a softmax likelihood with logits ``f`` and probabilities ``p``, the GGN is ``J^T (diag p - p p^T) J``;
    its diagonal is ``sum_c p_c J_c^2 - (sum_c p_c J_c)^2``, computed exactly from one backward pass per
    class and example. Uses the first ``max_examples`` examples of ``data``; returns (diagonal, count).
    """
    _classification_only(model, "the GGN")
    diag = {n: torch.zeros_like(w) for n, w in weights.items()}
    seen = 0
    for logits, _, grads in _example_jacobians(model, weights, data, max_examples, "laplace GGN", progress):
        p = logits.softmax(-1)
        first = {n: torch.zeros_like(d) for n, d in diag.items()}  # sum_c p_c J_c
        for c, per_weight in enumerate(grads):
            if per_weight is None or p[c] == 0:
                continue
            for name, g in zip(diag, per_weight):
                if g is not None:
                    diag[name] += p[c] * g.square()
                    first[name] += p[c] * g
        for name in diag:
            diag[name] -= first[name].square()
        seen += 1
    if seen == 0:
        raise ValueError("the GGN needs at least one example; the data is empty")
    return {n: d.clamp_min(0.0) for n, d in diag.items()}, seen


def linearised_predict(posterior: Posterior, data: Iterable, *, num_samples: int, seed: int = 0,
                       progress: bool = False) -> ClassPrediction:
    """The linearised (GLM) predictive of a Gaussian posterior with diagonal covariance, e.g. a Laplace fit.

    Linearising the network at the mean ``mu``, the logits are Gaussian: ``f ~ N(f(x; mu), J S J^T)`` with
    ``S`` the diagonal posterior covariance and ``J`` the Jacobian of the logits (one backward pass per
    class and example). ``num_samples`` logit draws per example are pushed through the softmax (Immer
    et al. 2021: the predictive that suits a GGN Laplace, unlike sampling the weights).
    """
    from pyro_bhpeft.guides import MeanField

    model = posterior.model
    _classification_only(model, "the linearised predictive")
    if not isinstance(posterior.guide, MeanField):
        raise ValueError(f"the linearised predictive needs a diagonal Gaussian posterior (MeanField, e.g. a "
                         f"Laplace fit), got {type(posterior.guide).__name__}")
    if num_samples < 1:
        raise ValueError(f"the linearised predictive needs num_samples >= 1, got {num_samples}")
    marginals = posterior.marginals()
    weights = {n: m.loc for n, m in marginals.items()}
    variances = [torch.zeros_like(m.loc) if m.scale is None else m.scale.square() for m in marginals.values()]  # None: point mass
    generator = torch.Generator().manual_seed(seed)
    probs, labels = [], []
    for logits, label, grads in _example_jacobians(model, weights, data, None, "linearised predictive", progress):
        finite = [c for c, g in enumerate(grads) if g is not None]
        jac = torch.stack([torch.cat([(g if g is not None else torch.zeros_like(v)).flatten()
                                      for g, v in zip(grads[c], variances)]) for c in finite])
        cov = (jac * torch.cat([v.flatten() for v in variances])) @ jac.T
        noise = torch.randn(num_samples, len(finite), generator=generator, dtype=cov.dtype)
        draws = logits.expand(num_samples, -1).clone()
        draws[:, finite] += noise @ _psd_sqrt(cov).T
        probs.append(draws.softmax(-1))
        labels.append(label)
    if not probs:
        raise ValueError("the linearised predictive needs at least one example; the data is empty")
    return class_prediction(torch.stack(probs, dim=1), torch.stack(labels))


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """A matrix ``L`` with ``L L^T = cov`` for a symmetric positive semi-definite ``cov``."""
    values, vectors = torch.linalg.eigh(0.5 * (cov + cov.T))
    return vectors * values.clamp_min(0.0).sqrt()


def _log_marginal_likelihood(precision: float, ggn: torch.Tensor, sq_norm: float) -> float:
    """The terms of the diagonal Laplace log evidence that depend on the prior precision ``precision``."""
    count = ggn.numel()
    return float(-0.5 * precision * sq_norm + 0.5 * count * math.log(precision)
                 - 0.5 * torch.log(ggn + precision).sum())


@dataclass(frozen=True)
class LaplaceFit:
    """A Laplace posterior, the prior precision it chose, and the evidence over the searched grid."""

    posterior: Posterior
    prior_precision: float
    grid: list[float]
    log_evidence: list[float]
    examples: int
    seconds: float


def laplace_posterior(posterior: Posterior, data: Iterable, *, num_data: int, max_examples: int = 256,
                      grid: Sequence[float] | None = None, progress: bool = False) -> LaplaceFit:
    """Post-hoc diagonal Laplace around the point estimate ``posterior.mean()`` (every site).

    The GGN diagonal is summed over the first ``max_examples`` examples of ``data`` and scaled to
    ``num_data``; the prior ``N(0, 1/lambda)`` takes the ``lambda`` in ``grid`` (default ``10^-4..10^6``)
    that maximises the Laplace evidence. The returned posterior is ``N(w*, (GGN + lambda)^-1)`` per
    weight, on the same model, with that prior recorded as the model's prior.
    """
    from pyro_bhpeft.guides import MeanField
    from pyro_bhpeft.priors import Normal

    start = time.perf_counter()
    model = posterior.model
    center = posterior.mean()
    ggn, seen = ggn_diagonal(model, center, data, max_examples=max_examples, progress=progress)
    scale = num_data / seen
    flat = torch.cat([g.flatten() for g in ggn.values()]) * scale
    sq_norm = float(sum(c.square().sum() for c in center.values()))
    grid = list(grid) if grid is not None else [10.0 ** e for e in torch.linspace(-4, 6, 41).tolist()]
    evidence = [_log_marginal_likelihood(lam, flat, sq_norm) for lam in grid]
    best = grid[max(range(len(grid)), key=evidence.__getitem__)]
    scales = {n: (g * scale + best).rsqrt() for n, g in ggn.items()}
    model.prior = Normal(scale=best ** -0.5)
    guide = MeanField.from_marginals(model, center, scales)
    meta = {**posterior.meta, "laplace": {"prior_precision": best, "examples": seen, "num_data": num_data}}
    result = Posterior(model, guide, backbone_name=posterior.backbone_name, meta=meta)
    return LaplaceFit(result, best, grid, evidence, seen, time.perf_counter() - start)


# ---- temperature scaling ----------------------------------------------------------------------------
def _logits(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp_min(1e-12).log()  # log-probabilities: logits up to a per-row constant


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(log probs / T)`` on held-out examples."""
    if len(labels) == 0:
        raise ValueError("temperature scaling needs labelled validation examples; the split is empty")
    logits, labels = _logits(probs.detach().double()), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def tempered(pred: ClassPrediction, temperature: float) -> ClassPrediction:
    """``pred`` with its probabilities re-tempered: ``softmax(log p / T)``."""
    return class_prediction((_logits(pred.probs) / temperature).softmax(-1)[None], pred.labels, num_samples=0)


# ---- LoRA through the peft library --------------------------------------------------------------------
class PeftLoraModel(nn.Module):
    """``peft`` LoRA on a frozen backbone, with our pooling and a linear head initialised like ours.

    ``num_labels=None`` scores (question, choice) pairs for multiple choice (inputs (B, C, L)).
    """

    def __init__(self, backbone: nn.Module, lora: LoraConfig, num_labels: int | None, pooling: str) -> None:
        super().__init__()
        try:
            from peft import LoraConfig as PeftLoraConfig, get_peft_model
        except ImportError:
            raise ConfigError("the peft-lora baseline needs the peft library; pip install peft") from None
        config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=list(lora.targets),
                                layers_to_transform=list(lora.layers) if lora.layers is not None else None)
        self.body = get_peft_model(backbone, config)
        self.pooling = pooling
        self.head = nn.Linear(backbone.config.hidden_size, num_labels or 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        from pyro_bhpeft.models.base import pool

        choices = inputs["input_ids"].dim() == 3
        flat = {k: (v.flatten(0, 1) if choices else v) for k, v in inputs.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.body(**flat).last_hidden_state
        out = self.head(pool(hidden, flat.get("attention_mask"), self.pooling))
        if not choices:
            return out
        scores = out.view(inputs["input_ids"].shape[:2])
        mask = inputs.get("choice_mask")
        return scores if mask is None else scores.masked_fill(~mask.bool(), float("-inf"))

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


@dataclass(frozen=True)
class PeftFit:
    model: PeftLoraModel
    history: list[float]
    steps: int
    seconds: float


def train_peft_lora(model: PeftLoraModel, loader: Iterable, *, epochs: int, lr: float, max_steps: int | None = None,
                    clip_norm: float | None = 1.0, seed: int = 0, progress: bool = True) -> PeftFit:
    """Plain cross-entropy training with Adam, the same step budget and clipping as :func:`fit`."""
    torch.manual_seed(seed)
    params = model.trainable()
    optimizer = torch.optim.Adam(params, lr=lr)
    total = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    history, step, start = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc="fit (peft)", unit="step", disable=not progress, dynamic_ncols=True)
    while step < total:
        for inputs, labels in loader:
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
            history.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step >= total:
                break
    bar.close()
    return PeftFit(model, history, step, time.perf_counter() - start)


@torch.no_grad()
def peft_predict(model: PeftLoraModel, data: Iterable) -> ClassPrediction:
    probs, labels = [], []
    for inputs, y in data:
        probs.append(model(inputs).softmax(-1))
        labels.append(y)
    return class_prediction(torch.cat(probs)[None], torch.cat(labels), num_samples=0)
