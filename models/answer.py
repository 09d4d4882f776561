"""Answer-token multiple choice for causal language models (kind ``answer_choice``).

``y ~ Categorical(logits = (W0 + head.weight) h_last + head.bias)``: ``h_last`` is the decoder's final
(normed) hidden state at the prompt's last token (prompts are left padded, see
:mod:`pyro_bhpeft.data.prompts`), ``W0`` the pretrained LM head's rows of the answer tokens, copied and
untied from the embeddings. The random head sites are the *change* to those rows and a bias, both
starting at 0, so at initialisation the model scores answers exactly as the pretrained LM does and a
prior centred at 0 shrinks towards the pretrained scoring. Only the answers' rows are computed, at the
last position only: no full-vocabulary head.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_bhpeft.config import ConfigError, PeftConfig
from pyro_bhpeft.layers import Site
from pyro_bhpeft.layers.base import zeros_init
from pyro_bhpeft.priors import Prior

from .base import BayesianPeftModel

__all__ = ["AnswerChoice", "answer_rows"]


def answer_rows(backbone: nn.Module, answer_ids: tuple[int, ...]) -> torch.Tensor:
    """The rows of ``backbone``'s LM head for ``answer_ids`` (a copy): its ``lm_head`` (kept by
    :func:`~pyro_bhpeft.backbone.load_backbone`), else the input embeddings (a tied head)."""
    head = getattr(backbone, "lm_head", None)
    weight = head.weight if head is not None else backbone.get_input_embeddings().weight
    if max(answer_ids) >= weight.shape[0]:
        raise ConfigError(f"answer token id {max(answer_ids)} is outside the vocabulary ({weight.shape[0]} rows)")
    return weight[list(answer_ids)].detach().clone()


class AnswerChoice(BayesianPeftModel):
    """Causal-LM multiple choice by answer tokens; ``answer_ids`` are the token ids of the answers, in
    choice order. Inputs are one left-padded prompt per question, (batch, seq); an optional boolean
    ``choice_mask`` (batch, answers) hides answers a question does not have (ABMLL's tasks of 2 to 5 choices
    share one head of letters).

    Example::

        model = AnswerChoice(backbone, PeftConfig(), priors.Normal(1.0), answer_ids=(330, 389, 340, 422))
    """

    task = "answer_choice"

    def __init__(self, backbone: nn.Module, peft: PeftConfig | None = None, prior: Prior | None = None,
                 *, answer_ids: tuple[int, ...] = (), pooling: str = "last") -> None:
        if len(answer_ids) < 2:
            raise ConfigError(f"answer_choice needs at least 2 answer token ids, got {list(answer_ids)}")
        self.answer_ids = tuple(int(i) for i in answer_ids)
        super().__init__(backbone, peft, prior, pooling=pooling)
        self.register_buffer("answer_weight", answer_rows(backbone, self.answer_ids), persistent=False)

    @classmethod
    def for_task(cls, backbone, peft, prior, spec, targets=None):
        return cls(backbone, peft, prior, answer_ids=spec.answer_ids)

    def head_sites(self) -> dict[str, Site]:
        k = len(self.answer_ids)
        return {"head.weight": Site((k, self.hidden_size), zeros_init), "head.bias": Site((k,), zeros_init)}

    def outputs(self, weights, features, batch):
        logits = F.linear(features, self.answer_weight + weights["head.weight"], weights["head.bias"])
        mask = batch.get("choice_mask")  # (batch, answers): a task with fewer choices than this head's answers
        return logits if mask is None else logits.masked_fill(~mask.to(logits.device), float("-inf"))

    def likelihood(self, logits, labels):
        pyro.sample("obs", dist.Categorical(logits=logits), obs=labels)

    def model_kwargs(self):
        return {**super().model_kwargs(), "answer_ids": list(self.answer_ids)}
