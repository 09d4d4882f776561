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

import inspect
from typing import Any, Mapping

import pyro
import torch

from pyro_bhpeft.config import ConfigError
from pyro_bhpeft.layers import Site

from .base import FOLD_ROWS, BayesianPeftModel, stacked_draws

__all__ = ["LanguageModel", "token_logprobs"]

_NO_CACHE = object()  # ``next_logits(cache=...)`` not given: no cache asked for


def token_logprobs(backbone: Any, hidden: torch.Tensor, ids: torch.Tensor,
                   where: torch.Tensor | None = None) -> torch.Tensor:
    """``log p(x_{t+1} | x_{<=t})``, ``(batch, seq - 1)``, from the LM head in float32: at every position, or only
    where the boolean ``where`` (batch, seq - 1) is set (zero elsewhere). The LM head over a 49k-token vocabulary
    is a fifth of a small model's forward, so a response-only loss runs it on the response's positions alone."""
    hidden, nxt = hidden[:, :-1], ids[:, 1:]
    if where is None:
        logp = backbone.lm_head(hidden).float().log_softmax(-1)
        return logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
    at = where.nonzero(as_tuple=True)
    logp = backbone.lm_head(hidden[at]).float().log_softmax(-1)  # (positions, vocab)
    out = torch.zeros(nxt.shape, dtype=torch.float32, device=hidden.device)
    return out.index_put(at, logp.gather(-1, nxt[at].unsqueeze(-1)).squeeze(-1))


def _cache_argument(backbone: Any) -> str:
    """The backbone's name for its key/value cache, in and out: ``cache`` (transformers 5.25 on) or the older
    ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


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
        target = batch["target_mask"].to(device)[:, 1:].bool()  # the response's tokens: the only loss
        with self.bound(weights):
            hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return token_logprobs(self.backbone, hidden, ids, where=target), target.float()

    def run_samples(self, draws, batch, max_rows=None):
        return [self.run(w, batch) for w in draws]

    @property
    def cacheable(self) -> bool:
        """Whether a key/value cache reproduces a full forward exactly. LoRA, adapters, gated LoRA and deltas act
        on each token alone, and prefix keys/values are prepended inside attention after the cache is updated
        (never cached, never rotated), so all are exact; flipout is not (it draws new signs at every forward,
        so a cached step would mix perturbations within one sequence): there the caller runs uncached."""
        return self._flipout() is None

    def next_logits(self, weights: Mapping[str, torch.Tensor], ids: torch.Tensor, cache: Any = _NO_CACHE, *,
                    attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None):
        """``(logits, cache)``: float32 next-token logits at the last position of ``ids`` (batch, seq), (batch,
        vocab), with ``weights`` bound. ``cache``: the previous call's (None on the first), so ``ids`` holds only
        the new tokens; the cache returned is the backbone's ``past_key_values`` (None where it keeps none).
        Without ``cache`` the whole sequence is run and nothing is kept. Left-padded rows: ``attention_mask``
        (batch, past + seq) and ``position_ids`` (batch, seq), as Hugging Face's ``generate`` passes them."""
        use = cache is not _NO_CACHE
        name = _cache_argument(self.backbone)
        device = self._device()
        extra = {k: v.to(device) for k, v in (("attention_mask", attention_mask), ("position_ids", position_ids))
                 if v is not None}
        with self.bound(weights):
            out = self.backbone(input_ids=ids.to(device), use_cache=use, **{name: cache if use else None}, **extra)
        logits = self.backbone.lm_head(out.last_hidden_state[:, -1]).float()
        return logits, (out.get(name) if use else None)

    def draw_logits(self, draws: list[Mapping[str, torch.Tensor]], ids: torch.Tensor, span: slice,
                    max_rows: int | None = None) -> torch.Tensor:
        """Float32 logits at positions ``span`` of one sequence ``ids`` (1, seq) under each draw, (K, T, vocab):
        one forward over the whole sequence per draw, the draws folded into the batch (as :meth:`run_samples`
        of the other models) up to ``max_rows`` rows per forward where every layer takes stacked draws."""
        ids = ids.to(self._device())
        foldable = self._flipout() is None and all(layer.batched_samples for layer in self.peft_layers)
        per_pass = max_rows or FOLD_ROWS.get(self._device().type, FOLD_ROWS["default"])
        if not foldable or per_pass < 2 or len(draws) == 1:
            hidden = []
            for w in draws:
                with self.bound(w):
                    hidden.append(self.backbone(input_ids=ids).last_hidden_state[0, span])
            return self.backbone.lm_head(torch.stack(hidden)).float()
        out = []
        for start in range(0, len(draws), per_pass):
            chunk = draws[start:start + per_pass]
            stacked = stacked_draws(chunk)
            with self.bound(stacked, samples=len(chunk)):
                hidden = self.backbone(input_ids=ids.repeat(len(chunk), 1)).last_hidden_state[:, span]
            out.append(self.backbone.lm_head(hidden).float())  # (chunk, T, vocab)
        return torch.cat(out)

    def likelihood(self, outputs, labels) -> None:
        logp, mask = outputs
        pyro.factor("obs", (logp * mask).sum(-1))  # one term per sequence: its response's log-likelihood

    def dummy_batch(self):
        ids = torch.zeros(1, 4, dtype=torch.long, device=self._device())
        target = torch.tensor([[0, 0, 1, 1]], device=self._device())
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "target_mask": target}

    def dummy_data(self):
        return self.dummy_batch(), None
