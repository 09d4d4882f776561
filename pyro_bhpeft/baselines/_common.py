"""What the baselines share: the task check, the per-example Jacobian loop that both the GGN
(:mod:`.laplace`) and the linearised predictive (:mod:`.linearised`) are built on, and the PSD square root
their logit draws (and :mod:`.laplace_torch`'s) take, and the first batches of a loader that the post-hoc
fits (Laplace-LoRA's curvature, TFB's anchors) read."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from ..config import ConfigError

Grads = list[tuple[torch.Tensor | None, ...] | None]


def first_batches(data: Iterable, max_examples: int | None) -> tuple[list[tuple[Any, torch.Tensor]], int]:
    """The ``(inputs, labels)`` batches of ``data`` up to the first that reaches ``max_examples`` examples in
    all (every batch when None), and how many examples they hold."""
    batches, seen = [], 0
    for inputs, labels in data:
        if max_examples is not None and seen >= max_examples:
            break
        batches.append((inputs, labels))
        seen += len(labels)
    return batches, seen


def classification_only(model: Any, what: str) -> None:
    if not model.predicts_classes:
        raise ConfigError(f"{what} supports models over classes (classification, multiple choice), not {model.task}")


def example_jacobians(model: Any, weights: dict[str, torch.Tensor], data: Iterable, max_examples: int | None,
                      desc: str, progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, Grads]]:
    """For each example (one at a time, at most ``max_examples``): its logits (C,), label, and the
    gradient of each finite logit with respect to every weight (one backward pass per class).
    Yields ``(logits, label, grads)`` with ``grads[c][k]`` the gradient of logit ``c`` for weight ``k``
    (None where a weight does not reach the output; ``grads[c]`` None where logit ``c`` is masked)."""
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


def psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """A matrix ``L`` with ``L L^T = cov`` for a symmetric positive semi-definite ``cov`` (..., C, C), batched
    over leading dimensions; singular ``cov`` (a masked choice's zero rows) is fine."""
    values, vectors = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
    return vectors * values.clamp_min(0.0).sqrt().unsqueeze(-2)
