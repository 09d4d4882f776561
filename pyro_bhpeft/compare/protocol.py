"""The comparison protocol: everything every method shares, fixed before anything is fitted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..io import asdict_since
from ..predict import DEFAULT_SAMPLES
from ..recipe import Recipe

__all__ = ["Protocol", "OOD_DEFAULTS"]

_ADDED = ("warmup_ratio", "lr_decay", "mc_scoring")  # fields added later, written only when set (see Protocol.to_dict)

OOD_DEFAULTS = {"sentiment": "r8", "r8": "sentiment", "r52": "sentiment", "20ng": "sentiment", "piqa": "winogrande",
                "winogrande": "piqa", "winogrande-s": "piqa", "winogrande-m": "piqa", "arc-easy": "openbookqa", "arc-challenge": "openbookqa",
                "openbookqa": "arc-easy", "commonsenseqa": "openbookqa"}


@dataclass(frozen=True)
class Protocol:
    """Everything every method shares. ``train_size``/``eval_size``: rows drawn at random (``subset_seed``)
    from the task's train split / from its test and validation splits and the OOD task's test split.
    ``max_steps`` caps steps (quick runs). ``ood_task`` defaults to :data:`OOD_DEFAULTS` of the task;
    ``""`` means none. ``mc_scoring``: how a causal LM scores multiple choice (:data:`Recipe.mc_scoring`:
    answer letters, or each choice's own likelihood, ``"cloze"``/``"cloze-mean"``).

    Example::

        >>> Protocol(task="sentiment", train_size=200).ood_task
        'r8'
    """

    task: str = "sentiment"
    backbone: str = "minilm"
    train_size: int = 1000
    eval_size: int = 500
    epochs: int = 2
    batch_size: int = 16
    lr: float = 2e-3
    max_length: int = 64
    samples: int = DEFAULT_SAMPLES
    ensemble_size: int = 3
    laplace_examples: int = 256
    ood_task: str | None = None
    max_steps: int | None = None
    subset_seed: int = 0
    warmup_ratio: float = 0.0
    lr_decay: str = "none"
    mc_scoring: str = "letters"

    def __post_init__(self) -> None:
        for name in ("train_size", "eval_size", "epochs", "batch_size", "samples", "ensemble_size", "laplace_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ConfigError(f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        self.recipe(0)  # an unknown lr_decay or a bad warmup_ratio: the recipe's one-line error
        if self.ood_task is None and self.task in OOD_DEFAULTS:
            object.__setattr__(self, "ood_task", OOD_DEFAULTS[self.task])

    def recipe(self, seed: int, **changes: Any) -> Recipe:
        """Deterministic LoRA under this protocol; methods change only what makes them different."""
        base = Recipe(backbone=self.backbone, guide="mle", epochs=self.epochs, max_steps=self.max_steps,
                      batch_size=self.batch_size, lr=self.lr, max_length=self.max_length, seed=seed,
                      warmup_ratio=self.warmup_ratio, lr_decay=self.lr_decay, mc_scoring=self.mc_scoring)
        return base.with_(**changes)

    @classmethod
    def read(cls, out: str | Path, **changes: Any) -> "Protocol":
        """The protocol a comparison folder ``out`` was run under (its ``protocol.json``), with ``changes``.

        Example::

            >>> Protocol.read("docs/compare/winogrande-s", ood_task="").max_length
            64
        """
        saved = Path(out) / "protocol.json"
        if not saved.is_file():
            raise ConfigError(f"{out} has no protocol.json; give a folder that pyro-bhpeft compare wrote")
        return cls(**{**json.loads(saved.read_text()), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The protocol as saved in ``protocol.json``; fields added since 0.2 only when set (older
        comparisons keep matching)."""
        return asdict_since(self, _ADDED)
