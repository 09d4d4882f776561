"""LoRA adapters in and out, in the peft library's folder format.

``export_peft_adapter`` writes a posterior's mean LoRA weights as ``adapter_config.json`` +
``adapter_model.safetensors``: ``peft.PeftModel.from_pretrained(base, folder)`` then computes what our model
computes at the posterior mean (for an encoder, ``base`` is the bare model, ``AutoModel``; for a decoder the
causal LM, ``AutoModelForCausalLM``). Our task head is not a peft module: it is written beside them, as
``bhpeft_head.safetensors`` with its pooling in ``bhpeft_head.json``.

``read_peft_adapter`` reads a peft LoRA adapter (a folder or a ``PeftModel``) into our LoRA config and
weights keyed by our site names, for :meth:`BayesianPEFT.from_peft
<pyro_bhpeft.front.BayesianPEFT.from_peft>`: the adapter as a point estimate (then TFB or Laplace on top),
or as the start and prior mean of a variational fit. Reading runs no code: JSON and safetensors only.

Example::

    export_peft_adapter(model, "adapters/sst")                  # model: a fitted BayesianPEFT
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(base), "adapters/sst")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataclasses import replace

from .config import ConfigError, LoraConfig, PeftConfig

__all__ = ["PeftAdapter", "export_peft_adapter", "read_peft_adapter", "import_peft_adapter", "peft_parts",
           "lora_from_peft", "start_guide_at"]

_PREFIX = "base_model.model."  # how peft names an adapter's tensors inside its wrapper
_HEAD_FILE, _HEAD_FACTS = "bhpeft_head.safetensors", "bhpeft_head.json"
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class PeftAdapter:
    """A peft LoRA adapter read into our terms: its :class:`LoraConfig`, its tensors by our site names
    (``<module path>.lora_A`` (r, in) and ``.lora_B`` (out, r), paths relative to the bare backbone) and the
    base model it was trained on (``None`` when the adapter does not say)."""

    config: LoraConfig
    weights: dict[str, Any]
    base_model: str | None = None
    head: dict[str, Any] | None = None  # our task head, where the folder was written by export_peft_adapter


def _decoder_prefix(backbone: Any) -> str:
    """Module-path prefix of the bare backbone inside the model a peft user loads: ``model.`` in a causal LM."""
    from .layers.arch import architecture

    return f"{type(backbone).base_model_prefix}." if architecture(backbone).decoder else ""


def _posterior_of(source: Any) -> Any:
    return source.posterior if hasattr(source, "next_round") else source


def export_peft_adapter(source: Any, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write the posterior mean of ``source`` (a fitted :class:`BayesianPEFT` or a :class:`Posterior`) as a peft
    LoRA adapter folder; the task head goes beside it. Only LoRA posteriors can be written: adapter, prefix
    and gate sites have no peft LoRA form."""
    from safetensors.torch import save_file

    from .io import atomic_dir, write_json

    posterior = _posterior_of(source)
    model = posterior.model
    others = [k for k in model.peft_config.kinds if k != "lora"]
    if others or model.peft_config.lora is None:
        raise ConfigError(f"only LoRA posteriors export to a peft adapter; this one has {', '.join(others) or 'no LoRA'}"
                          " (keep the run directory, or refit with LoRA alone)")
    lora = model.peft_config.lora
    mean = posterior.mean()
    prefix = _decoder_prefix(model.backbone)
    tensors, modules = {}, []
    for layer in model.peft_layers:
        path = f"{prefix}{layer.path}"
        modules.append(path)
        for site in ("lora_A", "lora_B"):
            tensors[f"{_PREFIX}{path}.{site}.weight"] = mean[f"{layer.path}.{site}"].detach().float().cpu().contiguous()
    head = {k: v.detach().float().cpu().contiguous() for k, v in mean.items() if k.startswith("head.")}
    decoder = bool(prefix)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM" if decoder else None, "r": lora.r,
              "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout, "target_modules": sorted(modules),
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
              "use_rslora": False, "use_dora": False, "modules_to_save": None,
              "base_model_name_or_path": posterior.backbone_name}
    with atomic_dir(folder, overwrite=overwrite) as stage:
        save_file(tensors, str(stage / "adapter_model.safetensors"))
        write_json(stage / "adapter_config.json", config)
        if head:
            save_file(head, str(stage / _HEAD_FILE))
        write_json(stage / _HEAD_FACTS, {"model": type(model).__name__, "pooling": model.pooling,
                                         "label_names": posterior.meta.get("label_names") or [],
                                         "note": "our task head at the posterior mean: logits = head.weight @ "
                                                 "pool(last_hidden_state) + head.bias"})
    return Path(folder)


def read_peft_adapter(adapter: Any) -> PeftAdapter:
    """Read a peft LoRA adapter: a folder with ``adapter_config.json`` + ``adapter_model.safetensors``, or a
    ``peft.PeftModel`` (its active adapter). One-line errors for anything else."""
    if hasattr(adapter, "peft_config") and hasattr(adapter, "state_dict"):
        return _from_peft_model(adapter)
    folder = Path(adapter)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise ConfigError(f"{folder} is not a peft adapter folder (adapter_config.json and adapter_model.safetensors "
                          "expected; a .bin adapter must be re-saved with safe_serialization=True)")
    if config_file.stat().st_size > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{config_file} is larger than any adapter config ({config_file.stat().st_size} bytes)")
    try:
        facts = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config_file} is not valid JSON ({err})") from None
    from safetensors.torch import load_file

    head = load_file(str(folder / _HEAD_FILE)) if (folder / _HEAD_FILE).is_file() else None
    return replace(_adapter(facts, load_file(str(weights_file))), head=head)


def _from_peft_model(model: Any) -> PeftAdapter:
    name = getattr(model, "active_adapter", "default")
    name = name[0] if isinstance(name, (list, tuple)) else name
    config = model.peft_config[name]
    facts = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    weights = {}
    for key, value in model.state_dict().items():
        if f".lora_A.{name}." in key or f".lora_B.{name}." in key:
            weights[key.replace(f".{name}.", ".")] = value.detach()
    return _adapter(facts, weights)


def _adapter(facts: dict[str, Any], tensors: dict[str, Any]) -> PeftAdapter:
    if str(facts.get("peft_type", "")).upper() != "LORA":
        raise ConfigError(f"only LoRA adapters can be read; this one is {facts.get('peft_type')!r}")
    for flag in ("use_dora", "fan_in_fan_out", "use_rslora"):
        if facts.get(flag):
            raise ConfigError(f"the adapter sets {flag}; only plain LoRA (y = W x + (alpha / r) B A x) is supported")
    if facts.get("rank_pattern") or facts.get("alpha_pattern"):
        raise ConfigError("the adapter has per-module ranks or alphas (rank_pattern/alpha_pattern); not supported")
    weights = {}
    for key, value in tensors.items():
        parts = key.split(".")
        if len(parts) < 3 or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B"):
            continue  # e.g. modules_to_save copies of a classifier: not LoRA
        path = ".".join(parts[:-2]).removeprefix(_PREFIX)
        weights[f"{path}.{parts[-2]}"] = value.float()
    if not weights:
        raise ConfigError("the adapter holds no lora_A/lora_B weights")
    r = {v.shape[0] for k, v in weights.items() if k.endswith("lora_A")}
    if r != {int(facts.get("r", 8))}:
        raise ConfigError(f"the adapter's lora_A ranks {sorted(r)} do not match its r = {facts.get('r')}")
    modules = sorted({k.rsplit(".", 1)[0] for k in weights})
    config = lora_from_peft({**facts, "target_modules": modules, "layers_to_transform": None})
    return PeftAdapter(config, weights, facts.get("base_model_name_or_path"))


def import_peft_adapter(adapter: Any, backbone: Any) -> PeftAdapter:
    """The adapter with its module paths made relative to our bare ``backbone`` (a decoder's ``model.`` prefix
    dropped) and checked against it: every path must name a linear layer of one of its blocks, with the
    adapter's shapes. Its config wraps the named layers (by in-block name) in the blocks the adapter covers; a
    layer so wrapped that the adapter lacks keeps LoRA's start (``B = 0``: no change to the output)."""
    from torch import nn

    from .layers.arch import find_blocks

    read = adapter if isinstance(adapter, PeftAdapter) else read_peft_adapter(adapter)
    prefix = _decoder_prefix(backbone)
    blocks_path, blocks = find_blocks(backbone)
    weights, names, layers = {}, set(), set()
    for name, value in read.weights.items():
        path, site = name.rsplit(".", 1)
        path = path.removeprefix(prefix) if prefix and path.startswith(prefix) else path
        index, rel, module = _block_module(blocks_path, blocks, path)
        if not isinstance(module, nn.Linear):
            raise ConfigError(f"the adapter's module {path!r} is not a linear layer in a block of "
                              f"{type(backbone).__name__}; was it trained on another base model?")
        want = (read.config.r, module.in_features) if site == "lora_A" else (module.out_features, read.config.r)
        if tuple(value.shape) != want:
            raise ConfigError(f"the adapter's {path}.{site} has shape {tuple(value.shape)}, the backbone needs {want}")
        weights[f"{path}.{site}"] = value
        names.add(rel)
        layers.add(index)
    config = LoraConfig(r=read.config.r, lora_alpha=read.config.lora_alpha, target_modules=tuple(sorted(names)),
                        layers=tuple(sorted(layers)), lora_dropout=read.config.lora_dropout)
    return PeftAdapter(config, weights, read.base_model, read.head)


def _block_module(blocks_path: str, blocks: Any, path: str) -> tuple[int, str, Any]:
    """``(block index, in-block name, module)`` of the module at ``path`` (module None when there is none)."""
    index, _, rel = path.removeprefix(blocks_path + ".").partition(".")
    if not path.startswith(blocks_path + ".") or not index.isdigit() or int(index) >= len(blocks) or not rel:
        return -1, rel, None
    try:
        return int(index), rel, blocks[int(index)].get_submodule(rel)
    except AttributeError:
        return int(index), rel, None


def peft_parts(peft: Any = None, **lora_words: Any) -> PeftConfig:
    """The PEFT parts from ``peft`` (a :class:`PeftConfig`, ``"lora"``, ``"hybrid"``, or a ``peft.LoraConfig``)
    with the LoRA fields in ``lora_words`` (peft's names: ``r``, ``lora_alpha``, ``target_modules``,
    ``lora_dropout``) changed."""
    words = {k: v for k, v in lora_words.items() if v is not None}
    if isinstance(words.get("target_modules"), list):
        words["target_modules"] = tuple(words["target_modules"])
    if peft is None or peft == "lora":
        parts = PeftConfig()
    elif peft == "hybrid":
        parts = PeftConfig.hybrid()
    elif isinstance(peft, PeftConfig):
        parts = peft
    elif isinstance(peft, LoraConfig):
        parts = PeftConfig(peft)
    elif str(getattr(peft, "peft_type", "")).upper().endswith("LORA"):  # the peft library's LoraConfig
        parts = PeftConfig(lora_from_peft(peft))
    else:
        raise ConfigError(f"peft must be a PeftConfig, 'lora', 'hybrid' or a peft.LoraConfig, got {peft!r}")
    if words:
        if parts.lora is None:
            raise ConfigError(f"{', '.join(words)} configure LoRA, but these PEFT parts have none")
        parts = PeftConfig(**{**parts.parts, "lora": replace(parts.lora, **words)})
    return parts


def lora_from_peft(config: Any) -> LoraConfig:
    """Our :class:`LoraConfig` from a ``peft.LoraConfig`` (or its ``adapter_config.json`` as a dict)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    targets = get("target_modules")
    if isinstance(targets, str):  # peft allows a regular expression here; we match name suffixes
        raise ConfigError(f"target_modules {targets!r} is a regular expression; give a list of module names")
    layers = get("layers_to_transform")
    return LoraConfig(r=int(get("r", 8)), lora_alpha=float(get("lora_alpha", 8)),
                      target_modules=tuple(targets) if targets else None,
                      lora_dropout=float(get("lora_dropout", 0.0) or 0.0),
                      layers=(layers,) if isinstance(layers, int) else (tuple(layers) if layers else None))


def start_guide_at(model: Any, guide: Any, start: dict[str, Any]) -> None:
    """Set ``guide`` up (it builds its parameters on first call) with its locations at ``start`` for those sites
    (and the model's usual start elsewhere)."""
    import pyro.poutine as poutine
    import torch

    usual = model.initial_values
    model.initial_values = lambda: {**usual(), **{k: v.to(model._device()) for k, v in start.items()}}
    try:
        with torch.no_grad(), poutine.block():
            guide(*model.dummy_data())
    finally:
        del model.initial_values
