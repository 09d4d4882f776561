"""Multiple choice on a causal LM scored by each choice's own likelihood ("cloze").

For a question with choices ``c_1 .. c_K`` and one posterior draw ``w`` of the PEFT weights (shared by the
question's choices), the score of choice ``k`` is ``sum_t log p_w(token_t | context, earlier tokens of c_k)``
over the choice's tokens (``ClozeChoice``) or their mean (``ClozeChoiceMean``, the harnesses' length
normalisation); ``y ~ Categorical(logits = scores)``. The LM head is the backbone's own, frozen: there is no
new head, so every random site is a PEFT weight.

Example::

    data = for_backbone(load_task("arc-easy"), lm.model, lm.tokenizer, scoring="cloze")
    model = ClozeChoice(lm.model, PeftConfig(), priors.Normal(1.0))
"""

from __future__ import annotations

from typing import Any, Mapping

import pyro
import pyro.distributions as dist
import torch

from pyro_bhpeft.layers import Site

from .base import BayesianPeftModel
from .classifier import choice_scores, flatten_choices
from .lm import _cache_argument

__all__ = ["ClozeChoice", "ClozeChoiceMean", "continuation_logprob"]


def continuation_logprob(backbone: Any, hidden: torch.Tensor, ids: torch.Tensor, continuation: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's continuation tokens and their count, ``(rows,)`` each. The LM head
    runs only where a continuation token is predicted (the position before it)."""
    target = continuation[:, 1:].bool()  # (rows, seq - 1): token t + 1 is predicted at position t
    rows, pos = target.nonzero(as_tuple=True)
    logp = backbone.lm_head(hidden[rows, pos]).float().log_softmax(-1)  # (tokens, vocab)
    token = logp.gather(1, ids[rows, pos + 1].unsqueeze(1)).squeeze(1)
    total = torch.zeros(ids.shape[0], device=hidden.device).index_add_(0, rows, token)
    return total, target.sum(1)


class ClozeChoice(BayesianPeftModel):
    """Scores: the summed log-likelihood of each choice's tokens (see the module docstring)."""

    task = "cloze_choice"
    normalise = False

    def __init__(self, backbone, peft=None, prior=None, *, pooling: str = "last") -> None:
        super().__init__(backbone, peft, prior, pooling=pooling)
        if not hasattr(backbone, "lm_head"):
            from pyro_bhpeft.config import ConfigError

            raise ConfigError("cloze scoring needs a causal LM backbone (loaded with its LM head, as load_backbone "
                              "loads a decoder)")

    @property
    def share_context(self) -> bool:
        """Whether :meth:`run` scores a question's shared context once (exact: the same scores, and the same
        flipout perturbation, as one pass over every (context, choice) row): not with prefix-tuning (its
        attention function keeps no cache) nor with the backbone's dropout on (each row would get its own mask)."""
        return not self.backbone.training and not any(layer.kind == "prefix" for layer in self.peft_layers)

    def _split(self, flat: Mapping[str, torch.Tensor], choices: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """``(context, rest)``: each question's leading tokens common to all its choices, less the last (whose
        output predicts a choice's first token), one row per question, right padded; and each row's remaining
        tokens, right padded, with their positions and continuation mask. None where a question shares no
        token to cache."""
        ids, mask, cont = flat["input_ids"], flat["attention_mask"], flat["continuation_mask"]
        rows, length = ids.shape
        q = rows // choices
        grouped = ids.view(q, choices, length)
        same = (grouped == grouped[:, :1]).all(1) & (mask.view(q, choices, length).bool().all(1)) \
            & ~cont.view(q, choices, length).bool().any(1)  # (q, length)
        common = same.int().cumprod(1).sum(1)  # the length of each question's common prefix
        shared = (common - 1).clamp_min(0)
        if int(shared.min()) < 1:
            return None
        positions = torch.arange(length, device=ids.device)
        width = int(shared.max())
        context = {"input_ids": grouped[:, 0, :width],
                   "attention_mask": (positions[:width] < shared[:, None]).long()}
        start = shared.repeat_interleave(choices)  # (rows,)
        size = mask.sum(1) - start
        span = int(size.max())
        where = (start[:, None] + positions[None, :span]).clamp_max(length - 1)
        kept = positions[None, :span] < size[:, None]
        rest = {"input_ids": ids.gather(1, where).masked_fill(~kept, 0),
                "attention_mask": kept.long(), "continuation_mask": cont.gather(1, where) * kept,
                "position_ids": start[:, None] + positions[None, :span]}
        return context, rest

    def head_sites(self) -> dict[str, Site]:
        return {}

    def flatten_inputs(self, batch):
        return flatten_choices(batch)

    def run(self, weights: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device = self._device()
        flat = {k: v.to(device) for k, v in self.flatten_inputs(batch).items()}
        choices = batch["input_ids"].shape[1]
        split = self._split(flat, choices) if self.share_context else None
        with self.bound(weights, group=1 if split else choices, passes=split is not None):
            if split is None:
                hidden = self.backbone(input_ids=flat["input_ids"],
                                       attention_mask=flat["attention_mask"]).last_hidden_state
            else:  # each question's context once, then its choices on the context's cached keys and values
                context, rest = split
                name = _cache_argument(self.backbone)
                cache = self.backbone(**context, use_cache=True).get(name)
                cache.batch_repeat_interleave(choices)
                self.regroup(choices)  # flipout: the choices of a question keep its context's perturbation
                mask = torch.cat([context["attention_mask"].repeat_interleave(choices, 0), rest["attention_mask"]], 1)
                hidden = self.backbone(input_ids=rest["input_ids"], attention_mask=mask,
                                       position_ids=rest["position_ids"], **{name: cache}).last_hidden_state
                flat = rest
        total, count = continuation_logprob(self.backbone, hidden, flat["input_ids"], flat["continuation_mask"])
        scores = total / count.clamp_min(1) if self.normalise else total
        return choice_scores(scores.unsqueeze(-1), batch)

    def run_samples(self, draws, batch, max_rows=None):
        return [self.run(w, batch) for w in draws]  # one forward per draw: the head is the LM's, over every token

    def outputs(self, weights, features, batch):
        raise NotImplementedError("cloze scores come from every continuation token, not pooled features")

    def likelihood(self, logits, labels):
        pyro.sample("obs", dist.Categorical(logits=logits), obs=labels)

    def dummy_batch(self):
        ids = torch.zeros(1, 2, 4, dtype=torch.long, device=self._device())
        continuation = torch.tensor([0, 0, 1, 1], device=self._device()).expand(1, 2, 4)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "continuation_mask": continuation}


class ClozeChoiceMean(ClozeChoice):
    """Scores: the per-token mean log-likelihood of each choice (length-normalised)."""

    task = "cloze_choice_mean"
    normalise = True
