"""Put Bayesian PEFT layers into a frozen backbone, following a :class:`PeftConfig`.

Every kind is found the same way: locate the transformer blocks (the model's ``ModuleList`` of
``num_hidden_layers`` entries), then the modules each kind wraps inside the chosen blocks.
"""

from __future__ import annotations

from torch import nn

from ..config import AdapterConfig, ConfigError, LoraConfig, PeftConfig, PrefixConfig
from .adapter import AdapterLayer
from .base import PeftLayer
from .lora import LoraLinear
from .prefix import PrefixLayer, attach_prefix, enable_prefix_attention, require_attention_interface

__all__ = ["inject", "find_blocks", "peft_layers"]

# Relative names of the feed-forward output projection inside one block, by model family.
FFN_OUTPUTS = ("output.dense", "mlp.down_proj", "mlp.fc2", "mlp.c_proj", "ffn.lin2", "mlp.dense_4h_to_h")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The path and list of transformer blocks (``encoder.layer``, ``layers``, ``h``, ...)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return name, module
    raise ConfigError(f"could not find the transformer blocks of {type(model).__name__}: "
                      "no nn.ModuleList with num_hidden_layers entries")


def peft_layers(model: nn.Module) -> list[PeftLayer]:
    """All PEFT layers already in ``model`` (prefix layers live on attention modules)."""
    layers = [m for m in model.modules() if isinstance(m, PeftLayer)]
    layers += [m.bhpeft_prefix for m in model.modules() if isinstance(getattr(m, "bhpeft_prefix", None), PeftLayer)]
    return layers


def _chosen(blocks: nn.ModuleList, layers: tuple[int, ...] | None, kind: str) -> list[int]:
    if layers is None:
        return list(range(len(blocks)))
    bad = [i for i in layers if i >= len(blocks)]
    if bad:
        raise ConfigError(f"{kind} layers {bad} do not exist: the model has blocks 0..{len(blocks) - 1}")
    return sorted(set(layers))


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _add_lora(model: nn.Module, prefix: str, blocks: nn.ModuleList, cfg: LoraConfig) -> list[PeftLayer]:
    added: list[PeftLayer] = []
    for i in _chosen(blocks, cfg.layers, "LoRA"):
        for rel, module in list(blocks[i].named_modules()):
            if isinstance(module, nn.Linear) and any(rel == t or rel.endswith("." + t) for t in cfg.targets):
                path = f"{prefix}.{i}.{rel}"
                layer = LoraLinear(module, path, i, cfg)
                _replace(model, path, layer)
                added.append(layer)
    if not added:
        names = sorted({n.rpartition(".")[2] for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"LoRA targets {list(cfg.targets)} match no linear layer of {type(model).__name__}; "
                          f"its linear layers are named {names}")
    return added


def _linear(module: nn.Module | None) -> nn.Module | None:
    """The linear layer itself, also when LoRA already wraps it."""
    return module.base if isinstance(module, LoraLinear) else module


def _add_adapters(model: nn.Module, prefix: str, blocks: nn.ModuleList, cfg: AdapterConfig) -> list[PeftLayer]:
    added: list[PeftLayer] = []
    for i in _chosen(blocks, cfg.layers, "adapter"):
        modules = dict(blocks[i].named_modules())
        rel = next((r for r in FFN_OUTPUTS if isinstance(_linear(modules.get(r)), nn.Linear)), None)
        if rel is None:
            raise ConfigError(f"no feed-forward output layer ({', '.join(FFN_OUTPUTS)}) in block {i} of "
                              f"{type(model).__name__}; adapters support BERT-, Llama- and GPT-style blocks")
        path = f"{prefix}.{i}.{rel}"
        layer = AdapterLayer(modules[rel], _linear(modules[rel]).out_features, path, i, cfg)
        _replace(model, path, layer)
        added.append(layer)
    return added


def _self_attention(block: nn.Module) -> tuple[str, nn.Module] | None:
    for rel, module in block.named_modules():
        if hasattr(module, "is_causal") and hasattr(module, "scaling") and "Cross" not in type(module).__name__:
            return rel, module
    return None


def _add_prefix(model: nn.Module, prefix: str, blocks: nn.ModuleList, cfg: PrefixConfig) -> list[PeftLayer]:
    require_attention_interface(model)
    chosen = _chosen(blocks, cfg.layers, "prefix")
    found = [_self_attention(blocks[i]) for i in chosen]
    if any(f is None for f in found):
        raise ConfigError(f"prefix-tuning needs self-attention, but {type(model).__name__} has none in its "
                          "blocks; drop 'prefix' from the PEFT parts")
    enable_prefix_attention(model)
    c = model.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    added: list[PeftLayer] = []
    for i, (rel, attention) in zip(chosen, found):
        layer = PrefixLayer(f"{prefix}.{i}.{rel}", i, cfg, kv_heads, head_dim)
        attach_prefix(attention, layer)
        added.append(layer)
    return added


def inject(model: nn.Module, config: PeftConfig) -> list[PeftLayer]:
    """Wrap the modules of ``model`` named by ``config``; returns the PEFT layers in a fixed order.

    All or nothing: if any part of ``config`` is refused, ``model`` is left as it was.
    """
    if peft_layers(model):
        raise ConfigError("this backbone already carries PEFT layers; load a fresh one with load_backbone()")
    if not config.kinds:
        return []
    prefix, blocks = find_blocks(model)
    attn = getattr(model.config, "_attn_implementation", None)
    layers: list[PeftLayer] = []
    try:
        if config.lora is not None:
            layers += _add_lora(model, prefix, blocks, config.lora)
        if config.adapter is not None:
            layers += _add_adapters(model, prefix, blocks, config.adapter)
        if config.prefix is not None:
            layers += _add_prefix(model, prefix, blocks, config.prefix)
    except Exception:
        _undo(model, layers, attn)
        raise
    return layers


def _undo(model: nn.Module, layers: list[PeftLayer], attn: str | None) -> None:
    """Put back every wrapped module and detach every prefix (newest first)."""
    for layer in reversed(layers):
        if isinstance(layer, PrefixLayer):
            for module in model.modules():
                if getattr(module, "bhpeft_prefix", None) is layer:
                    object.__delattr__(module, "bhpeft_prefix")
        else:
            _replace(model, layer.path, layer.base)
    if attn is not None and getattr(model.config, "_attn_implementation", None) != attn:
        model.set_attn_implementation(attn)
