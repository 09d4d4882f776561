"""Classification models: one label per text, or one choice among several."""

from __future__ import annotations

from typing import Mapping

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

__all__ = ["SequenceClassifier", "MultipleChoice", "flatten_choices", "choice_scores"]


def flatten_choices(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Multiple-choice inputs as the backbone sees them: (batch, choices, seq) -> (batch * choices, seq),
    without the ``choice_mask``."""
    if batch["input_ids"].dim() != 3:
        raise ValueError(f"multiple-choice input_ids must be (batch, choices, seq), got {tuple(batch['input_ids'].shape)}")
    return {k: v.flatten(0, 1) for k, v in batch.items() if k != "choice_mask"}


def choice_scores(scores: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One score per (question, choice) pair, (batch * choices, 1) -> (batch, choices), with the choices
    hidden by ``batch``'s optional boolean ``choice_mask`` (batch, choices) set to ``-inf``."""
    batch_size, choices = batch["input_ids"].shape[:2]
    scores = scores.view(batch_size, choices)
    mask = batch.get("choice_mask")
    return scores if mask is None else scores.masked_fill(~mask.bool().to(scores.device), float("-inf"))


class SequenceClassifier(BayesianPeftModel):
    """``y ~ Categorical(logits = W pool(h) + b)`` with a random linear head ``head.weight``, ``head.bias``.

    Example::

        model = SequenceClassifier(backbone, PeftConfig(), priors.Normal(1.0), num_labels=2)
    """

    task = "classification"

    def __init__(self, backbone: nn.Module, peft: PeftConfig | None = None, prior: Prior | None = None,
                 *, num_labels: int = 2, pooling: str = "auto") -> None:
        if int(num_labels) < 2:
            raise ConfigError(f"num_labels must be at least 2, got {num_labels}")
        self.num_labels = int(num_labels)
        super().__init__(backbone, peft, prior, pooling=pooling)

    @classmethod
    def for_task(cls, backbone, peft, prior, spec, targets=None):
        return cls(backbone, peft, prior, num_labels=len(spec.label_names))

    def head_sites(self) -> dict[str, Site]:
        return {"head.weight": Site((self.num_labels, self.hidden_size), normal_init(0.02)),
                "head.bias": Site((self.num_labels,), zeros_init)}

    def outputs(self, weights, features, batch):
        return F.linear(features, weights["head.weight"], weights["head.bias"])  # (batch, labels)

    def likelihood(self, logits, labels):
        pyro.sample("obs", dist.Categorical(logits=logits), obs=labels)

    def model_kwargs(self):
        return {**super().model_kwargs(), "num_labels": self.num_labels}


class MultipleChoice(BayesianPeftModel):
    """One score per (question, choice) pair, ``y ~ Categorical(scores)`` over the choices.

    Inputs are (batch, choices, seq); the head is ``head.weight`` (1, hidden) and ``head.bias`` (1,).
    An optional boolean ``choice_mask`` (batch, choices) hides padding choices.
    """

    task = "multiple_choice"

    def head_sites(self) -> dict[str, Site]:
        return {"head.weight": Site((1, self.hidden_size), normal_init(0.02)), "head.bias": Site((1,), zeros_init)}

    def flatten_inputs(self, batch):
        return flatten_choices(batch)

    def outputs(self, weights, features, batch):
        return choice_scores(F.linear(features, weights["head.weight"], weights["head.bias"]), batch)

    def likelihood(self, logits, labels):
        pyro.sample("obs", dist.Categorical(logits=logits), obs=labels)

    def dummy_batch(self):
        ids = torch.zeros(1, 2, 4, dtype=torch.long, device=self._device())
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
