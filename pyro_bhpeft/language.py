"""Language modelling with a Bayesian PEFT posterior: response batches, token-level evaluation, and generated
answers with their uncertainty.

- :func:`lm_batches`: prompt + response sequences (the prompt cut from its start when too long), right padded,
  with ``target_mask`` on the response's tokens (and the end-of-sequence token), for
  :class:`~pyro_bhpeft.models.LanguageModel` and :func:`~pyro_bhpeft.infer.fit`.
- :func:`token_metrics`: held-out perplexity, token accuracy, token ECE and NLL of the response tokens under the
  posterior predictive (the mean over ``K`` draws of each next-token distribution; ``K = 0``: the mean weights).
- :func:`generate`: greedy answers under the posterior mean, decoded with the backbone's key/value cache (each
  step runs only the new token); for each, its log-likelihood under the mean and under ``K`` draws, the
  predictive NLL ``-log mean_k p_k(answer)``, the expected NLL ``-mean_k log p_k(answer)``, and the summed
  token-level predictive entropy and mutual information (the epistemic part) along the answer;
  :func:`answer_match` scores an answer against a gold one, :func:`generation_rows` makes them flat rows.
- :func:`fit_token_temperature`: one temperature on the next-token logits, fitted by the response tokens' NLL on
  held-out batches; ``token_metrics`` and ``generate`` take it as ``temperature`` (``softmax(logits / T)``).
- :func:`selective_answering`: accuracy against coverage when the most uncertain answers are withheld, and the
  AUROC of an uncertainty score for telling wrong answers from right ones.

Example::

    batches = lm_batches(tokenizer, prompts, responses, max_length=64, batch_size=4, shuffle=True)
    result = fit(LanguageModel(backbone, PeftConfig(), prior), guide, batches)
    answers = generate(result.posterior, tokenizer, questions, num_samples=8)
"""

from __future__ import annotations

import re
import string
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from .analysis.metrics import confidence_ece

__all__ = ["lm_batches", "qa_pairs", "token_metrics", "generate", "fit_token_temperature", "selective_answering",
           "normalise_answer", "answer_match", "generation_rows"]


def lm_batches(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], *, max_length: int = 64,
               batch_size: int = 8, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """Batches ``(inputs, None)``: ``input_ids``, ``attention_mask``, ``target_mask`` (batch, at most max_length), as
    :func:`~pyro_bhpeft.data.responses.response_rows` encodes them, without the trailing positions that are padding
    in every row (:func:`~pyro_bhpeft.data.batches.trim_right_padding`: causal, so no kept position changes)."""
    from .data.batches import trim_right_padding
    from .data.responses import response_rows

    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many responses as prompts (got {len(prompts)} and {len(responses)}), at least one")
    encoded = response_rows(tokenizer, prompts, responses, max_length)
    rows = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
    order = RandomSampler(rows, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(rows)

    def collate(batch: list[dict]) -> tuple[dict[str, torch.Tensor], None]:
        return trim_right_padding({k: torch.tensor([r[k] for r in batch]) for k in batch[0]}), None

    return DataLoader(rows, batch_size=batch_size, sampler=order, collate_fn=collate)


def qa_pairs(data: Any, split: str = "train") -> tuple[list[str], list[str]]:
    """``(prompts, responses)`` from a multiple-choice task's split: each question in the cloze frame
    (:func:`~pyro_bhpeft.data.cloze.cloze_context`) and its gold answer's text as the response."""
    from .data.cloze import cloze_context

    rows = data.splits[split]
    prompts = [cloze_context(data.spec.name, q) for q in rows["question"]]
    return prompts, [" " + choices[y].strip() for choices, y in zip(rows["choices"], rows["label"])]


def _draws(posterior: Any, num_samples: int, seed: int) -> list[dict]:
    return [posterior.mean()] if num_samples == 0 else posterior.sample(num_samples, seed=seed)


def _next_token_logits(model: Any, weights: dict, ids: torch.Tensor, mask: torch.Tensor,
                       where: torch.Tensor) -> torch.Tensor:
    """Float32 next-token logits at the positions the boolean ``where`` (batch, seq - 1) marks, each predicting the
    token after it: (positions, vocab). The LM head runs on those positions only."""
    with model.bound(weights):
        hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    return model.backbone.lm_head(hidden[:, :-1][where]).float()


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / T`` (the logits themselves at ``T = 1``)."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


@torch.no_grad()
def token_metrics(posterior: Any, batches: Any, *, num_samples: int = 8, seed: int = 0,
                  temperature: float = 1.0) -> dict[str, float]:
    """Perplexity, NLL, token accuracy and ECE (percent, 15 bins, as the classifiers') of the response tokens under
    the posterior predictive (each draw's next-token distribution ``softmax(logits / temperature)``)."""
    model, draws = posterior.model, _draws(posterior, num_samples, seed)
    nll, conf, correct = [], [], []
    for inputs, _ in batches:
        ids, mask, target = (inputs[k].to(model._device()) for k in ("input_ids", "attention_mask", "target_mask"))
        keep = target[:, 1:].bool()
        true = ids[:, 1:][keep]  # the response's tokens, each predicted from the position before it
        probs = torch.stack([_tempered(_next_token_logits(model, w, ids, mask, keep), temperature).softmax(-1)
                             for w in draws]).mean(0)  # (tokens, vocab)
        top, arg = probs.max(-1)
        nll.append(-probs.gather(-1, true.unsqueeze(-1)).squeeze(-1).clamp_min(1e-12).log())
        conf.append(top)
        correct.append((arg == true).float())
    nll_t, conf_t, correct_t = torch.cat(nll), torch.cat(conf).numpy(), torch.cat(correct).numpy()
    mean_nll = float(nll_t.mean())
    return {"nll": mean_nll, "perplexity": float(np.exp(mean_nll)), "token_accuracy": float(correct_t.mean()),
            "token_ece": confidence_ece(conf_t, correct_t), "tokens": int(len(nll_t)), "num_samples": num_samples}


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def _greedy(model: Any, weights: dict, ids: list[int], max_new_tokens: int, eos: int | None, *,
            use_cache: bool = True, temperature: float = 1.0) -> tuple[list[int], float]:
    """``(answer tokens, their log-likelihood under softmax(logits / temperature))`` of one prompt: greedy decoding
    under ``weights`` (:func:`_greedy_batch` of one row)."""
    return _greedy_batch(model, weights, [ids], max_new_tokens, eos, use_cache=use_cache, temperature=temperature)[0]


@torch.no_grad()
def _greedy_batch(model: Any, weights: dict, contexts: Sequence[list[int]], max_new_tokens: int, eos: int | None, *,
                  use_cache: bool = True, temperature: float = 1.0) -> list[tuple[list[int], float]]:
    """Greedy decoding of several prompts at once under ``weights``, each stopping before ``eos``: the prompts left
    padded (masked out, positions counted from each row's first real token), so every row's answer and
    log-likelihood are those it gets alone (up to float rounding: in bfloat16 or a GPU kernel a near-tie between
    two tokens can fall either way). With ``use_cache`` (and a model whose cache is exact,
    :attr:`LanguageModel.cacheable`) each step runs only the new tokens against the backbone's key/value cache;
    otherwise each step reruns the whole sequences. Both give the same tokens (``tests/test_language_model.py``)."""
    device = model._device()
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[0] * (width - len(c)) + list(c) for c in contexts], device=device)  # pads: any id, masked
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
    cache: Any = None if use_cache and model.cacheable else False
    out: list[list[int]] = [[] for _ in contexts]
    loglik = [0.0] * len(contexts)
    live = [True] * len(contexts)
    step = ids
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # from each row's first token (as generate; RoPE ignores a shift)
        if cache is False:  # uncached: the whole sequences again
            logits, _ = model.next_logits(weights, ids, attention_mask=mask, position_ids=positions)
        else:
            logits, cache = model.next_logits(weights, step, cache=cache, attention_mask=mask,
                                              position_ids=positions[:, -step.shape[1]:])
            cache = False if cache is None else cache  # a backbone that keeps no cache: uncached from here
        tokens = logits.argmax(-1)
        logp = _tempered(logits, temperature).log_softmax(-1)
        for row, token in enumerate(tokens.tolist()):
            if live[row] and token == eos:
                live[row] = False
            elif live[row]:
                loglik[row] += float(logp[row, token])
                out[row].append(token)
        if not any(live):
            break
        step = tokens.unsqueeze(-1)
        ids, mask = torch.cat([ids, step], 1), torch.cat([mask, torch.ones_like(step)], 1)
    return list(zip(out, loglik))


@torch.no_grad()
def generate(posterior: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 16,
             num_samples: int = 8, seed: int = 0, use_cache: bool = True,
             temperature: float = 1.0, batch_size: int = 16) -> list[dict[str, Any]]:
    """Greedy answers under the posterior mean, each with its uncertainty under ``num_samples`` draws.

    Per answer: ``loglik_mean`` (its log-likelihood under the mean), ``loglik_draws`` (under each draw: one forward
    over prompt + answer per draw, the draws folded into one batch), ``predictive_nll`` ``-log mean_k p_k``,
    ``expected_nll`` ``-mean_k log p_k``, and the summed token ``predictive_entropy`` and ``mutual_information``.
    ``use_cache=False`` decodes without the key/value cache (the same answers, slower). ``temperature`` divides
    every logit before its softmax (:func:`fit_token_temperature`): the answers are the same, their scores tempered.
    ``batch_size`` prompts are decoded together (left padded; each gets the answer it gets alone)."""
    from .errors import ConfigError

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size is the number of prompts decoded together, a positive integer; got {batch_size!r}")
    contexts = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
    empty = [i for i, c in enumerate(contexts) if not c]
    if empty:
        raise ConfigError(f"prompt {empty[0]} is empty (no tokens); every prompt needs text to answer")
    model, mean = posterior.model, posterior.mean()
    draws = _draws(posterior, num_samples, seed)
    decoded = [pair for start in range(0, len(contexts), batch_size)
               for pair in _greedy_batch(model, mean, contexts[start:start + batch_size], max_new_tokens,
                                         tokenizer.eos_token_id, use_cache=use_cache, temperature=temperature)]
    rows = []
    for prompt, context, (answer, loglik_mean) in zip(prompts, contexts, decoded):
        x = torch.tensor([context + answer], device=model._device())
        span = slice(len(context) - 1, len(context) + len(answer) - 1)  # positions that predict the answer
        probs = _tempered(model.draw_logits(draws, x, span), temperature).softmax(-1)  # (K, T, V)
        target = torch.tensor(answer, device=x.device, dtype=torch.long)
        loglik = probs.gather(-1, target.expand(len(draws), -1).unsqueeze(-1)).squeeze(-1).clamp_min(1e-12).log().sum(-1)
        predictive = probs.mean(0)
        entropy = _entropy(predictive)
        mutual = (entropy - _entropy(probs).mean(0)).clamp_min(0.0)
        predictive_nll = float(-(torch.logsumexp(loglik, 0) - np.log(len(draws))))
        rows.append({"prompt": prompt, "answer": tokenizer.decode(answer), "answer_ids": answer, "tokens": len(answer),
                     "loglik_mean": loglik_mean, "loglik_draws": loglik.tolist(), "expected_nll": float(-loglik.mean()),
                     "predictive_nll": predictive_nll, "predictive_entropy": float(entropy.sum()),
                     "mutual_information": float(mutual.sum())})
    return rows


@torch.no_grad()
def _response_logits(posterior: Any, batches: Any, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (tokens, vocab), targets (tokens,))`` of every response token of ``batches``: the mean's logits
    (``num_samples = 0``), else the log of the draws' mean next-token probabilities."""
    model, draws = posterior.model, _draws(posterior, num_samples, seed)
    logits, targets = [], []
    for inputs, _ in batches:
        ids, mask, target = (inputs[k].to(model._device()) for k in ("input_ids", "attention_mask", "target_mask"))
        keep = target[:, 1:].bool()
        per_draw = torch.stack([_next_token_logits(model, w, ids, mask, keep) for w in draws])
        pooled = per_draw[0] if len(draws) == 1 else per_draw.log_softmax(-1).logsumexp(0)
        logits.append(pooled.cpu())
        targets.append(ids[:, 1:][keep].cpu())
    return torch.cat(logits), torch.cat(targets)


def fit_token_temperature(posterior: Any, batches: Any, *, num_samples: int = 0, seed: int = 0,
                          chunk: int = 256) -> float:
    """The temperature ``T`` minimising the mean NLL of the response tokens of held-out ``batches`` under
    ``softmax(logits / T)`` (Guo et al. 2017 on next-token distributions): LBFGS on ``log T`` from ``T = 1``, bounded
    at :data:`~pyro_bhpeft.baselines.temperature.MAX_TEMPERATURE` as the classifiers' temperature. ``num_samples``:
    the posterior mean's logits (0) or the log of ``K`` draws' mean probabilities. Use it as ``token_metrics(...,
    temperature=T)`` and ``generate(..., temperature=T)``.

    Example::

        T = fit_token_temperature(posterior, lm_batches(tokenizer, val_prompts, val_responses, max_length=96))
    """
    from torch.nn import functional as F

    from .baselines.temperature import MAX_TEMPERATURE

    logits, targets = _response_logits(posterior, batches, num_samples, seed)
    if len(targets) == 0:
        raise ValueError("temperature scaling needs held-out response tokens; the batches have none")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:  # the mean NLL, its gradient summed chunk by chunk (the logits stay float32)
        optimizer.zero_grad()
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(targets), chunk):
            part = F.cross_entropy(logits[start:start + chunk].double() / log_t.exp(), targets[start:start + chunk],
                                   reduction="sum") / len(targets)
            part.backward()
            total += part.detach()
        return total

    optimizer.step(closure)
    return min(float(log_t.detach().exp()), MAX_TEMPERATURE)


def answer_match(answer: str, gold: str) -> dict[str, bool]:
    """``exact_match`` (the texts equal, outer spaces aside) and ``normalised_match`` (:func:`normalise_answer`)."""
    return {"exact_match": answer.strip() == gold.strip(),
            "normalised_match": normalise_answer(answer) == normalise_answer(gold)}


def generation_rows(rows: Sequence[dict[str, Any]], gold: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """One flat row per answer of :func:`generate` (what ``pyro-bhpeft predict`` writes): its fields in order, the
    draws' log-likelihoods as ``loglik_0 .. loglik_{K-1}`` and ``answer_ids`` as space-separated token ids; with
    ``gold`` answers, ``response``, ``exact_match`` and ``normalised_match`` (None where a gold answer is missing)."""
    out = []
    for i, row in enumerate(rows):
        flat: dict[str, Any] = {"prompt": row["prompt"]}
        if gold is not None:
            flat["response"] = gold[i]
            flat.update(answer_match(row["answer"], gold[i]) if gold[i] is not None else
                        {"exact_match": None, "normalised_match": None})
        flat.update({k: v for k, v in row.items() if k not in ("prompt", "answer_ids", "loglik_draws")})
        flat.update({f"loglik_{k}": v for k, v in enumerate(row["loglik_draws"])})
        flat["answer_ids"] = " ".join(map(str, row["answer_ids"]))
        out.append(flat)
    return out


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces: the usual normalised exact match."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def selective_answering(correct: Sequence[bool], uncertainty: Sequence[float]) -> dict[str, Any]:
    """Accuracy of the answers kept at each coverage (most certain first), its area, and the AUROC of
    ``uncertainty`` for flagging the wrong answers."""
    from .analysis.metrics import accuracy_coverage_curve, ood_auroc

    right = np.asarray(correct, dtype=bool)
    u = np.asarray(uncertainty, dtype=float)
    probs = np.stack([right, ~right], axis=1).astype(float)  # class 0 is "right": accuracy is the share right
    curve = accuracy_coverage_curve(probs, np.zeros(len(right), dtype=int), u)
    auroc = ood_auroc(u[right], u[~right]) if right.any() and (~right).any() else float("nan")
    return {"coverage": curve.coverage.tolist(), "accuracy": curve.accuracy.tolist(),
            "area": float(curve.accuracy.mean()), "auroc_wrong": auroc}
