"""Put Bayesian PEFT layers into a frozen backbone, following a :class:`PeftConfig`.

The backbone's blocks come from its architecture entry (:mod:`pyro_bhpeft.layers.arch`); each part of
the config is added by its registered kind (:mod:`pyro_bhpeft.layers.kinds`), in registration order.
"""

from __future__ import annotations

from torch import nn

from ..config import ConfigError, PeftConfig
from .arch import architecture, find_blocks
from .base import PeftLayer
from .kinds import PEFT_KINDS, Target

__all__ = ["inject", "find_blocks", "peft_layers"]


def peft_layers(model: nn.Module) -> list[PeftLayer]:
    """All PEFT layers already in ``model`` (prefix layers live on attention modules)."""
    layers = [m for m in model.modules() if isinstance(m, PeftLayer)]
    layers += [m.bhpeft_prefix for m in model.modules() if isinstance(getattr(m, "bhpeft_prefix", None), PeftLayer)]
    return layers


def inject(model: nn.Module, config: PeftConfig) -> list[PeftLayer]:
    """Wrap the modules of ``model`` named by ``config``; returns the PEFT layers in a fixed order.

    All or nothing: if any part of ``config`` is refused, ``model`` is left as it was.
    """
    if peft_layers(model):
        raise ConfigError("this backbone already carries PEFT layers; load a fresh one with load_backbone()")
    if not config.kinds:
        return []
    path, blocks = find_blocks(model)
    target = Target(model, path, blocks, architecture(model))
    attn = getattr(model.config, "_attn_implementation", None)
    layers: list[PeftLayer] = []
    try:
        for name, part in config.parts.items():
            layers += PEFT_KINDS[name].add(target, part)
    except Exception:
        for layer in reversed(layers):  # newest first
            layer.remove(model)
        if attn is not None and getattr(model.config, "_attn_implementation", None) != attn:
            model.set_attn_implementation(attn)
        raise
    return layers
