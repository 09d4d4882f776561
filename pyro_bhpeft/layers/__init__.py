"""Bayesian PEFT layers: LoRA, bottleneck Adapter and prefix-tuning, one contract for all.

Each kind is one module (config in :mod:`pyro_bhpeft.config`, layer and add-function here) ending
with its registration line, ``register_peft_kind(name, ConfigClass, add_function)``.
"""

from .arch import ARCHITECTURES, Architecture, architecture, find_blocks
from .base import PeftLayer, Site
from .kinds import PEFT_KINDS, PeftKind, Target, register_peft_kind, unregister_peft_kind
from .lora import LoraLinear  # noqa: F401  (registers "lora")
from .adapter import AdapterLayer  # noqa: F401  (registers "adapter"; after lora: it may wrap a LoRA layer)
from .prefix import PrefixLayer  # noqa: F401  (registers "prefix")
from .gates import GatedLoraLinear  # noqa: F401  (registers "gated-lora"; instead of "lora", not beside it)
from .delta import DeltaLinear  # noqa: F401  (registers "delta": ABMLL's full-matrix task weights)
from .inject import inject, peft_layers

__all__ = ["PeftLayer", "Site", "LoraLinear", "GatedLoraLinear", "DeltaLinear", "AdapterLayer", "PrefixLayer", "inject", "find_blocks", "peft_layers",
           "PEFT_KINDS", "PeftKind", "Target", "register_peft_kind", "unregister_peft_kind", "ARCHITECTURES",
           "Architecture", "architecture"]
