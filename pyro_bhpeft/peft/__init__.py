"""Bayesian PEFT layers: LoRA, bottleneck Adapter and prefix-tuning, one contract for all."""

from .adapter import AdapterLayer
from .base import PeftLayer, Site
from .inject import find_blocks, inject, peft_layers
from .lora import LoraLinear
from .prefix import PrefixLayer

__all__ = ["PeftLayer", "Site", "LoraLinear", "AdapterLayer", "PrefixLayer", "inject", "find_blocks", "peft_layers"]
