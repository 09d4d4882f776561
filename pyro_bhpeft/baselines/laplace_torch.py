"""Laplace-LoRA (Yang et al. 2024) as its authors run it: ``laplace-torch`` (Daxberger et al. 2021) around a
LoRA fine-tuned through the ``peft`` library, over the LoRA and head weights only.

The settings are those of the reference implementation in BLoB's repository (Wang-ML-Lab/bayesian-peft,
``modelwrappers/laplace.py``): a Kronecker-factored (KFAC) GGN over all trainable weights, one scalar prior
precision ("homo") started at 1 and set by maximising the Laplace marginal likelihood (1,000 Adam steps), and
the linearised (GLM) predictive, its logits sampled from their full (class-correlated) Gaussian 100,000 times
per example ("mc_corr_100000"); ``link="probit"`` gives the probit approximation instead. ``structure="diag"``
swaps KFAC for the diagonal GGN of the same library. Their low-rank approximation of Kronecker factors with
edges over 100 is not used: MiniLM's largest factor is 384 x 384, exact and cheap.

``laplace-torch`` declares ``torchvision`` (and so does ``backpack-for-pytorch``) without importing it on this
path; on a CPU-only torch PyPI's torchvision wheel does not import and pulls a CUDA torch, so the four
packages are installed without their declared dependencies (:data:`LAPLACE_TORCH_INSTALL`; the ``laplace``
extra carries the ones they do import).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel

from ..config import ConfigError
from ..io import write_json
from ..predict import ClassPrediction, class_prediction, concat_predictions
from ._common import first_batches, psd_sqrt

__all__ = ["LAPLACE_TORCH_INSTALL", "LaplaceTorchFit", "laplace_torch_fit", "laplace_torch_predict"]

LAPLACE_TORCH_INSTALL = ("pip install 'pyro-bhpeft[laplace]' && pip install --no-deps laplace-torch==0.3 "
                         "asdfghjkl==0.1a4 backpack-for-pytorch==1.7.1 curvlinops-for-pytorch==3.0.1")
STRUCTURES = ("kron", "diag")
LINKS = ("mc", "probit")
AUTHORS_MC_SAMPLES = 100_000  # logit draws per example ("mc_corr_100000")
AUTHORS_MARGLIK_STEPS = 1000
_LABELS = "labels"
STATE_FILE = "state.safetensors"  # a kept fit's laplace-torch state  # the key laplace-torch reads targets from in a dict batch


def _laplace():
    try:
        import laplace
    except ImportError as err:
        raise ConfigError(f"the laplace-kfac and laplace-diag methods need laplace-torch ({err}): "
                          f"{LAPLACE_TORCH_INSTALL}") from None
    return laplace


class _DictModel(nn.Module):
    """The model as laplace-torch calls it: one dict in (its batch, with the labels in it), logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # laplace-torch's Jacobians vmap the backward pass, which has no batching rule for the fused CPU
        # attention kernel (a slow per-row fallback); the eager attention computes the same function and batches
        backbone = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
        if backbone is not None and backbone.config._attn_implementation != "eager":
            backbone.set_attn_implementation("eager")

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.model({k: v for k, v in batch.items() if k != _LABELS})


class _DictBatches:
    """Our ``(inputs, labels)`` batches as laplace-torch reads a Hugging Face loader: dicts with ``labels``,
    and a ``dataset`` whose length is the number of examples N (it scales the prior against the data)."""

    def __init__(self, data: Iterable, max_examples: int | None) -> None:
        batches, seen = first_batches(data, max_examples)
        self.batches = [{**inputs, _LABELS: labels} for inputs, labels in batches]
        if not self.batches:
            raise ValueError("the Laplace fit needs at least one training example; the data is empty")
        self.dataset = range(seen)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class LaplaceTorchFit:
    """A fitted laplace-torch posterior: the ``laplace`` object, its structure, the prior precision the
    marginal likelihood chose, the examples its curvature summed over and the fit's seconds."""

    laplace: Any
    structure: str
    prior_precision: float
    examples: int
    seconds: float

    def write_to(self, folder: Path) -> None:
        """Keep the fit in ``folder`` (``state.safetensors``: laplace-torch's state as safetensors plus JSON, no
        pickle; ``laplace.json``: the facts)."""
        from ..safe_state import write_state

        write_state(Path(folder) / STATE_FILE, self.laplace.state_dict())
        write_json(Path(folder) / "laplace.json", {"structure": self.structure, "prior_precision": self.prior_precision,
                                                    "examples": self.examples, "seconds": self.seconds})

    @classmethod
    def load(cls, model: nn.Module, folder: Path) -> "LaplaceTorchFit":
        """The fit kept in ``folder`` around ``model`` (the weights it was fitted at)."""
        from ..safe_state import StateError, read_state

        facts = json.loads((Path(folder) / "laplace.json").read_text())
        state = Path(folder) / STATE_FILE
        if not state.is_file():  # an older version's state.pt is a pickle: never read
            raise ConfigError(f"{folder} keeps no {STATE_FILE} (an older version's state.pt is not read, as it could "
                              "run code); delete the folder to refit")
        la = _new_laplace(model, facts["structure"])
        try:
            la.load_state_dict(read_state(state))
        except StateError as err:
            raise ConfigError(f"{err}; delete {folder} to refit") from None
        return cls(la, facts["structure"], facts["prior_precision"], facts["examples"], facts["seconds"])


def _new_laplace(model: nn.Module, structure: str):
    if structure not in STRUCTURES:
        raise ConfigError(f"unknown Laplace structure {structure!r}; choose one of {', '.join(STRUCTURES)}")
    return _laplace().Laplace(_DictModel(model), "classification", subset_of_weights="all",
                              hessian_structure=structure, prior_precision=1.0, dict_key_y=_LABELS,
                              backend=_per_example_backend())


_BACKEND = None


def _per_example_backend():
    """laplace-torch's default back-end (curvlinops GGN) with its Jacobians taken one example at a time.

    The library's ``jacobians`` takes ``jacrev`` of the whole batch's logits, i.e. B x C backward passes of the
    whole batch, most of them through other examples' zero blocks (3.2 s per MiniLM example on one core); one
    forward and C backward passes per example give the same (B, C, P) Jacobians 22x faster
    (``benchmarks/laplace_jacobians.py``). It is
    what the diagonal GGN and every GLM prediction call; KFAC's curvature does not use it.
    """
    global _BACKEND
    if _BACKEND is None:
        from laplace.curvature import CurvlinopsGGN

        class PerExampleGGN(CurvlinopsGGN):
            def jacobians(self, x, enable_backprop: bool = False):
                if enable_backprop:
                    return super().jacobians(x, enable_backprop=True)
                params = list(self.params_dict.values())
                size = next(v for v in x.values() if torch.is_tensor(v)).shape[0]
                jacobians, outputs = [], []
                for i in range(size):
                    one = {k: v[i:i + 1] if torch.is_tensor(v) and v.dim() and v.shape[0] == size else v
                           for k, v in x.items()}
                    with torch.enable_grad():
                        out = self.model(one)[0]
                        rows = []
                        for c in range(len(out)):
                            grads = torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
                            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                                   for g, p in zip(grads, params)]))
                    jacobians.append(torch.stack(rows))
                    outputs.append(out.detach())
                return torch.stack(jacobians), torch.stack(outputs)

        _BACKEND = PerExampleGGN
    return _BACKEND


def laplace_torch_fit(model: nn.Module, data: Iterable, *, structure: str = "kron", max_examples: int | None = None,
                      marglik_steps: int = AUTHORS_MARGLIK_STEPS, progress: bool = False) -> LaplaceTorchFit:
    """The Laplace posterior of ``model``'s trainable weights (a trained :class:`PeftLoraModel`: LoRA and head)
    at their current values, from the GGN summed over ``data`` (``(inputs, labels)`` batches; the first
    ``max_examples``, default all), with a scalar prior precision maximising the marginal likelihood."""
    la = _new_laplace(model, structure)
    tick = time.perf_counter()
    batches = _DictBatches(data, max_examples)
    la.fit(batches, progress_bar=progress)
    with warnings.catch_warnings():  # a reminder about the grid-search link, unconditional for classification
        warnings.filterwarnings("ignore", message="By default `link_approx`")
        la.optimize_prior_precision("glm", method="marglik", n_steps=marglik_steps, prior_structure="scalar")
    return LaplaceTorchFit(la, structure, float(la.prior_precision.reshape(-1)[0]), len(batches.dataset),
                           time.perf_counter() - tick)


@torch.no_grad()
def laplace_torch_predict(fit: LaplaceTorchFit, data: Iterable, *, link: str = "mc",
                          num_samples: int = AUTHORS_MC_SAMPLES, seed: int = 0) -> ClassPrediction:
    """The GLM predictive of ``fit`` on ``data``: logits ``f ~ N(f(x; mu), J Sigma J^T)`` (the full C x C
    covariance), then ``link="mc"``: the mean softmax of ``num_samples`` draws (so the expected entropy and
    mutual information are those of the draws), or ``link="probit"``: the probit approximation
    ``softmax(mu_c / sqrt(1 + pi/8 Sigma_cc))`` (no spread, mutual information 0)."""
    if link not in LINKS:
        raise ConfigError(f"unknown GLM link {link!r}; choose one of {', '.join(LINKS)}")
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for inputs, labels in data:
        with torch.enable_grad():  # the Jacobians of the logits
            mean, cov = fit.laplace._glm_predictive_distribution(dict(inputs))
        if link == "probit":
            probs = (mean / (1 + torch.pi / 8 * cov.diagonal(dim1=-2, dim2=-1)).sqrt()).softmax(-1)
            parts.append(class_prediction(probs[None], labels, num_samples=0))
        else:
            parts.append(class_prediction(_logit_draws(mean, cov, num_samples, generator).softmax(-1), labels))
    if not parts:
        raise ValueError("the GLM predictive needs at least one example; the data is empty")
    return concat_predictions(parts)


def _logit_draws(mean: torch.Tensor, cov: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """``num_samples`` draws (K, B, C) of ``N(mean_b, cov_b)`` per row; a PSD square root tolerates the
    singular covariances of masked choices (their logits are -inf with zero Jacobian)."""
    finite = torch.isfinite(mean)
    cov = torch.where(finite[:, :, None] & finite[:, None, :], cov, torch.zeros_like(cov))
    root = psd_sqrt(cov)
    noise = torch.randn(num_samples, *mean.shape, generator=generator, dtype=mean.dtype)
    return mean + torch.einsum("bcd,kbd->kbc", root, noise)
