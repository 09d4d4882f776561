"""IVON-LoRA (Cong et al. 2024): LoRA trained with the IVON optimiser (Shen et al. 2024, the ``ivon-opt``
package), whose Gaussian posterior over the LoRA and head weights is sampled at prediction.

The settings are the IVON-LoRA authors': learning rate 0.03, effective sample size = the training-set size,
Hessian initialisation 3e-4 (their range is 3e-4 to 1e-3), beta2 0.99999, clip radius 1e-3, one weight sample
per step; IVON's default weight decay 1e-4 (its prior precision). No gradient clipping besides IVON's own.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..config import ConfigError
from ..predict import ClassPrediction, class_prediction

__all__ = ["IVON_SETTINGS", "ivon_optimizer", "ivon_predict"]

IVON_SETTINGS = {"lr": 0.03, "hess_init": 3e-4, "beta2": 0.99999, "clip_radius": 1e-3, "weight_decay": 1e-4,
                 "mc_samples": 1}


def ivon_optimizer(params: Iterable[torch.nn.Parameter], num_data: int, **changes: Any):
    """IVON over ``params`` with the IVON-LoRA settings (``changes`` override them), ``ess = num_data``."""
    try:
        import ivon
    except ImportError:
        raise ConfigError("the ivon method needs the ivon-opt package: pip install ivon-opt") from None
    return ivon.IVON(list(params), ess=num_data, **{**IVON_SETTINGS, **changes})


@torch.no_grad()
def ivon_predict(model: torch.nn.Module, optimizer: Any, data: Iterable, *, num_samples: int,
                 seed: int = 0) -> ClassPrediction:
    """The predictive of ``model`` under ``num_samples`` IVON posterior draws (0: its mean); draw ``k`` is the
    same for every batch (seeded), so per-example quantities come from one sample set."""
    probs, labels = [], []
    for inputs, y in data:
        if num_samples == 0:
            probs.append(model(inputs).softmax(-1)[None])
        else:
            draws = []
            with torch.random.fork_rng(devices=[]):
                for k in range(num_samples):
                    torch.manual_seed(seed * 1000 + k)
                    with optimizer.sampled_params():
                        draws.append(model(inputs).softmax(-1))
            probs.append(torch.stack(draws))
        labels.append(y)
    return class_prediction(torch.cat(probs, dim=1), torch.cat(labels), num_samples=num_samples)
