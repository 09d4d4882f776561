"""A causal LM whose PEFT weights are random, trained on the next-token likelihood of a response given a prompt.

For a sequence ``x`` (prompt then response) and one posterior draw ``w``,
``log p(response | prompt, w) = sum_t mask_t log p_w(x_{t+1} | x_{<=t})``, the mask on the response's tokens
only: the prompt carries no loss. Each sequence is one observation (a factor inside the data plate, so a
minibatch is scaled to the full data as every other model here). The LM head is the backbone's own and
frozen: every random site is a PEFT weight.

Example::

    model = LanguageModel(lm.model, PeftConfig(), priors.Normal(1.0))
    batches = lm_batches(lm.tokenizer, prompts, responses, max_length=64, batch_size=4)
"""

from __future__ import annotations

from typing import Any, Mapping

import pyro
import torch

from pyro_bhpeft.config import ConfigError
from pyro_bhpeft.layers import Site

from .base import BayesianPeftModel

__all__ = ["LanguageModel", "token_logprobs"]


def token_logprobs(backbone: Any, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log p(x_{t+1} | x_{<=t})`` for every position, ``(batch, seq - 1)``, from the LM head in float32."""
    logp = backbone.lm_head(hidden[:, :-1]).float().log_softmax(-1)
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


class LanguageModel(BayesianPeftModel):
    """Outputs ``(token log-probabilities (batch, seq - 1), target mask (batch, seq - 1))``."""

    task = "language_model"
    predicts_classes = False

    def __init__(self, backbone, peft=None, prior=None, *, pooling: str = "last") -> None:
        if not hasattr(backbone, "lm_head"):
            raise ConfigError("a language-model task needs a causal LM backbone (loaded with its LM head, as "
                              "load_backbone loads a decoder)")
        super().__init__(backbone, peft, prior, pooling=pooling)

    def head_sites(self) -> dict[str, Site]:
        return {}

    def run(self, weights: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]):
        device = self._device()
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with self.bound(weights):
            hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return token_logprobs(self.backbone, hidden, ids), batch["target_mask"].to(device)[:, 1:].float()

    def run_samples(self, draws, batch, max_rows=None):
        return [self.run(w, batch) for w in draws]

    def likelihood(self, outputs, labels) -> None:
        logp, mask = outputs
        pyro.factor("obs", (logp * mask).sum(-1))  # one term per sequence: its response's log-likelihood

    def dummy_batch(self):
        ids = torch.zeros(1, 4, dtype=torch.long, device=self._device())
        target = torch.tensor([[0, 0, 1, 1]], device=self._device())
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "target_mask": target}

    def dummy_data(self):
        return self.dummy_batch(), None
