"""Predictive modes: how K posterior draws become predictions, from the full sampler to one forward.

- ``sample``: K draws, each through the whole model (folded into the batch where it pays): the reference;
- ``shared-trunk``: the same draws with the blocks below the first random one run once (:mod:`pyro_bhpeft.trunk`);
  exact, for runs with point-mass lower blocks (``Recipe(random_blocks=N)``);
- ``closed-form``: one forward at the mean PEFT weights, the head's Gaussian in closed form
  (:mod:`pyro_bhpeft.closed_form`); exact logit moments where the head is the only random part;
- ``auto``: the cheapest exact mode the run supports.

Example::

    mode = resolve_mode(posterior, "auto")          # "closed-form", "shared-trunk" or "sample"
    pred = predict_with(posterior, loader, mode, num_samples=8)
"""

from __future__ import annotations

from typing import Any, Iterable

from .errors import ConfigError

__all__ = ["PREDICTIVE_MODES", "resolve_mode", "predict_with"]

PREDICTIVE_MODES = ("auto", "sample", "closed-form", "shared-trunk")


def resolve_mode(posterior: Any, mode: str = "auto") -> str:
    """``mode``, or for ``auto`` the cheapest exact one: ``closed-form`` when the head is the only random part of a
    classifier (its logits are then exactly Gaussian), ``shared-trunk`` when the lower blocks are point masses,
    else ``sample``."""
    if mode not in PREDICTIVE_MODES:
        raise ConfigError(f"unknown predictive mode {mode!r}; choose one of {', '.join(PREDICTIVE_MODES)}")
    if mode != "auto":
        return mode
    classes = posterior.model.predicts_classes
    random = {name for name, m in posterior.marginals().items() if m.scale is not None}
    if classes and random and all(name.startswith("head.") for name in random):
        return "closed-form"
    from .trunk import first_random_block

    return "shared-trunk" if classes and random and first_random_block(posterior) > 0 else "sample"


def predict_with(posterior: Any, data: Iterable, mode: str, *, num_samples: int, seed: int = 0, **kwargs: Any):
    """Predictions of ``data`` in ``mode`` (already resolved; see :func:`resolve_mode`)."""
    if mode == "closed-form":
        from .closed_form import closed_form_predict

        return closed_form_predict(posterior, data)
    if mode == "shared-trunk":
        from .trunk import shared_trunk_predict

        return shared_trunk_predict(posterior, data, num_samples=num_samples, seed=seed)
    from .predict import predict

    return predict(posterior, data, num_samples=num_samples, seed=seed, **kwargs)
