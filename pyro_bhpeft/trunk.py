"""K posterior draws for the price of the random top: the frozen trunk below the first random block runs once.

When the PEFT sites of the lower blocks are point masses (a recipe with ``random_blocks=L``: variance only in
the top ``L`` blocks and the head), every draw computes the same hidden state at the input of the first
random block. :func:`shared_trunk_predict` runs the blocks below once per batch (stopping at that block),
then folds the ``K`` draws into the batch for the top blocks only. Outputs equal the full sampler's (to
floating-point rounding); the cost is about ``1 + K L / N`` deterministic forwards for ``N`` blocks.

It needs blocks that take and return the hidden state as a tensor (BERT, RoBERTa, Llama, Qwen2 and the
other families of :data:`~pyro_bhpeft.layers.arch.ARCHITECTURES` with transformers 5); a family whose blocks
return tuples falls back to the full sampler, and :func:`first_random_block` says when there is nothing to
share.

Example::

    recipe = Recipe(guide="mean-field", random_blocks=2)        # variance in the top 2 blocks and the head
    pred = shared_trunk_predict(posterior, loader, num_samples=8)
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from .layers.arch import find_blocks
from .predict import _cpu, _split, class_prediction

__all__ = ["first_random_block", "lower_block_sites", "shared_trunk_outputs", "shared_trunk_predict"]


class _Stop(Exception):
    """Raised by the hook at the first random block: the lower blocks' work is done."""


def lower_block_sites(model: Any, random_blocks: int) -> tuple[str, ...]:
    """The PEFT site names of every block below the top ``random_blocks`` (point masses in such a recipe)."""
    _, blocks = find_blocks(model.backbone)
    first = len(blocks) - int(random_blocks)
    return tuple(f"{layer.path}.{local}" for layer in model.peft_layers
                 if layer.block is not None and layer.block < first for local in layer.site_specs())


def first_random_block(posterior: Any) -> int:
    """The index of the lowest block with a random PEFT site (0: nothing below it to share)."""
    random = {name for name, m in posterior.marginals().items() if m.scale is not None}
    blocks = [layer.block for layer in posterior.model.peft_layers
              if any(f"{layer.path}.{local}" in random for local in layer.site_specs())]
    if any(b is None for b in blocks):
        return 0
    _, all_blocks = find_blocks(posterior.model.backbone)
    return min(blocks, default=len(all_blocks))


def _repeat(value: Any, rows: int, k: int) -> Any:
    """``value`` with every tensor whose first dimension is the batch repeated ``k`` times (sample-major)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value.repeat(k, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_repeat(v, rows, k) for v in value)
    return value


def _trunk_inputs(model: Any, block: torch.nn.Module, weights: dict, inputs: dict) -> tuple[tuple, dict]:
    """The arguments the backbone passes to ``block`` for ``inputs`` (the lower blocks run once, with
    ``weights``); the forward stops there."""
    seen: dict[str, Any] = {}

    def stop(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Stop

    handle = block.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with model.bound(weights):
            model.backbone(**inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["args"], seen["kwargs"]


def shared_trunk_outputs(model: Any, draws: list[dict], batch: dict, first: int) -> list[Any] | None:
    """``[model.run(w, batch) for w in draws]`` with blocks below ``first`` run once (None: not possible here)."""
    from .models.base import stacked_draws

    device = model._device()
    flat = {k: v.to(device) for k, v in model.flatten_inputs(batch).items() if k in ("input_ids", "attention_mask",
                                                                                      "token_type_ids")}
    path, blocks = find_blocks(model.backbone)
    rows, k = next(iter(flat.values())).shape[0], len(draws)
    args, kwargs = _trunk_inputs(model, blocks[first], draws[0], flat)
    hidden = args[0].repeat(k, 1, 1)
    rest, kwargs = _repeat(tuple(args[1:]), rows, k), {n: _repeat(v, rows, k) for n, v in kwargs.items()}
    with model.bound(stacked_draws(draws), samples=k):
        for block in blocks[first:]:
            out = block(hidden, *rest, **kwargs)
            if not isinstance(out, torch.Tensor):
                return None
            hidden = out
        norm = getattr(model.backbone, "norm", None)  # decoders' final norm (Llama, Qwen2, ...)
        if norm is not None:
            hidden = norm(hidden)
        return model.folded_outputs(draws, hidden, flat.get("attention_mask"), batch)


@torch.no_grad()
def shared_trunk_predict(posterior: Any, data: Iterable, *, num_samples: int = 8, seed: int = 0):
    """The full sampler's class predictions with the trunk below the first random block shared by the draws."""
    from .predict import predict

    model = posterior.model
    first = first_random_block(posterior)
    if first == 0 or not model.predicts_classes or model.flipout_locs is not None:
        return predict(posterior, data, num_samples=num_samples, seed=seed)
    draws = posterior.sample(num_samples, seed=seed)
    outs, labels = [], []
    for item in data:
        inputs, y = _split(item)
        batch_out = shared_trunk_outputs(model, draws, inputs, first)
        if batch_out is None:  # blocks that return tuples: the full sampler
            return predict(posterior, data, num_samples=num_samples, seed=seed)
        outs.append(torch.stack([_cpu(o).softmax(-1) for o in batch_out]))
        if y is not None:
            labels.append(y)
    return class_prediction(torch.cat(outs, dim=1), torch.cat(labels) if labels else None, num_samples=num_samples)
