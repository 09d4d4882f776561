"""The registry of PEFT kinds: each kind is a config dataclass, a layer and an add-function.

A kind's module ends with its one registration line::

    register_peft_kind("lora", LoraConfig, add_lora)

where ``add_lora(target, config) -> list[PeftLayer]`` wraps the modules of ``target.model``'s
chosen blocks and returns the new layers. :func:`~pyro_bhpeft.layers.inject` loops over the kinds a
:class:`~pyro_bhpeft.config.PeftConfig` names, in registration order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..config import PEFT_KINDS, ConfigError, PeftKind
from .arch import Architecture
from .base import PeftLayer

__all__ = ["PeftKind", "PEFT_KINDS", "register_peft_kind", "unregister_peft_kind", "Target"]


@dataclass(frozen=True)
class Target:
    """Where a kind adds its layers: the backbone, its blocks (at ``path``) and its architecture facts."""

    model: nn.Module
    path: str
    blocks: nn.ModuleList
    arch: Architecture

    def chosen(self, layers: tuple[int, ...] | None, kind: str) -> list[int]:
        """The block indices a kind's ``layers`` option selects (all when None), checked."""
        if layers is None:
            return list(range(len(self.blocks)))
        bad = [i for i in layers if i >= len(self.blocks)]
        if bad:
            raise ConfigError(f"{kind} layers {bad} do not exist: the model has blocks 0..{len(self.blocks) - 1}")
        return sorted(set(layers))

    def replace(self, path: str, new: nn.Module) -> None:
        """Put ``new`` at the module path ``path`` of the backbone."""
        parent, _, child = path.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, new)


def register_peft_kind(name: str, config: type, add: Callable[[Target, Any], list[PeftLayer]], *,
                       replace: bool = False) -> PeftKind:
    """Make ``name`` a PEFT kind (one record in :data:`PEFT_KINDS`): ``PeftConfig(name=config(...))``,
    ``--peft name`` and ``inject`` know it."""
    return PEFT_KINDS.register(name, PeftKind(config, add), replace=replace)


def unregister_peft_kind(name: str) -> None:
    PEFT_KINDS.unregister(name)
