"""LoRA (Hu et al., 2021) with our head and pooling, trained through the Hugging Face ``peft`` library
(Mangrulkar et al., 2022) with plain cross-entropy: the external reference our maximum-likelihood LoRA must match."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from pyro_bhpeft.models.base import pool
from pyro_bhpeft.models.classifier import choice_scores, flatten_choices

from ..config import ConfigError, LoraConfig
from ..layers.arch import architecture
from ..predict import ClassPrediction, class_prediction

__all__ = ["PeftLoraModel", "PeftFit", "train_peft_lora", "peft_predict"]

_BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class PeftLoraModel(nn.Module):
    """``peft`` LoRA on a frozen backbone, with our pooling and a linear head initialised like ours.

    ``num_labels=None`` scores (question, choice) pairs for multiple choice (inputs (B, C, L)). ``answer_ids``
    (a decoder's answer tokens, kind ``answer_choice``) scores one prompt by those tokens' logits at its last
    token as :class:`~pyro_bhpeft.models.AnswerChoice` does: the head starts as a copy of the LM head's rows
    of the answers (bias 0), so training starts from the pretrained LM's scoring, as the peers' LoRA does.
    """

    def __init__(self, backbone: nn.Module, lora: LoraConfig, num_labels: int | None, pooling: str,
                 answer_ids: tuple[int, ...] | None = None) -> None:
        super().__init__()
        try:
            from peft import LoraConfig as PeftLoraConfig, get_peft_model
        except ImportError:
            raise ConfigError("the peft-lora baseline needs the peft library; pip install peft") from None
        config = PeftLoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=0.0, target_modules=list(lora.target_modules or architecture(backbone).lora_targets),
                                layers_to_transform=list(lora.layers) if lora.layers is not None else None)
        self.body = get_peft_model(backbone, config)
        self.pooling = pooling
        self.head = nn.Linear(backbone.config.hidden_size, len(answer_ids) if answer_ids else num_labels or 1)
        nn.init.zeros_(self.head.bias)
        if answer_ids:
            from pyro_bhpeft.models.answer import answer_rows

            with torch.no_grad():
                self.head.weight.copy_(answer_rows(backbone, tuple(answer_ids)))
        else:
            nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        choices = inputs["input_ids"].dim() == 3
        flat = {k: v for k, v in (flatten_choices(inputs) if choices else inputs).items() if k in _BACKBONE_INPUTS}
        hidden = self.body(**flat).last_hidden_state  # (batch [* choices], seq, hidden)
        out = self.head(pool(hidden, flat.get("attention_mask"), self.pooling))
        return choice_scores(out, inputs) if choices else out

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


@dataclass(frozen=True)
class PeftFit:
    """A trained :class:`PeftLoraModel`, its per-step losses, step count and wall time."""

    model: PeftLoraModel
    history: list[float]
    steps: int
    seconds: float


def train_peft_lora(model: PeftLoraModel, loader: Iterable, *, epochs: int, lr: float, max_steps: int | None = None,
                    clip_norm: float | None = 1.0, seed: int = 0, progress: bool = True,
                    optimizer: torch.optim.Optimizer | None = None,
                    sample: Callable[[], ContextManager] | None = None, warmup_ratio: float = 0.0,
                    lr_decay: str = "none") -> PeftFit:
    """Plain cross-entropy training with Adam, the same step budget, clipping and learning-rate schedule
    (``warmup_ratio``, ``lr_decay``: :func:`~pyro_bhpeft.infer.lr_factor`) as :func:`fit`; or with another
    ``optimizer`` (its own peak rate, the same schedule) whose gradient is taken inside ``sample()`` (IVON's
    sampled weights)."""
    from ..infer import lr_factor

    torch.manual_seed(seed)
    params = model.trainable()
    optimizer = optimizer or torch.optim.Adam(params, lr=lr)
    total = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup_ratio=warmup_ratio, decay=lr_decay))
    history, step, start = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc="fit (peft)", unit="step", disable=not progress, dynamic_ncols=True)
    while step < total:
        for inputs, labels in loader:
            with sample() if sample is not None else contextlib.nullcontext():
                loss = F.cross_entropy(model(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
            schedule.step()
            history.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step >= total:
                break
    bar.close()
    return PeftFit(model, history, step, time.perf_counter() - start)


@torch.no_grad()
def peft_predict(model: PeftLoraModel, data: Iterable) -> ClassPrediction:
    """The predictive of a trained :class:`PeftLoraModel`: one deterministic pass per batch."""
    probs, labels = [], []
    for inputs, y in data:
        probs.append(model(inputs).softmax(-1))
        labels.append(y)
    return class_prediction(torch.cat(probs)[None], torch.cat(labels), num_samples=0)
