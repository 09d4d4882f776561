"""Bayesian prefix-tuning through transformers' attention registry (no model code copied).

Each chosen attention module gets ``P`` learned key and value vectors per key/value head, prepended
to the keys and values of every sequence; the attention mask gains ``P`` always-visible columns.
We register an attention function (and its mask function) under :data:`ATTN_NAME` with
``AttentionInterface``/``AttentionMaskInterface`` and switch the backbone to it; modules without a
bound prefix fall through to plain SDPA, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, PrefixConfig
from .base import PeftLayer, Site, normal_init
from .kinds import Target, register_peft_kind

__all__ = ["ATTN_NAME", "PrefixLayer", "enable_prefix_attention", "routes_attention", "require_attention_interface",
           "attach_prefix", "add_prefixes"]

ATTN_NAME = "bhpeft_prefix"
_PREFIX_ATTR = "bhpeft_prefix"


class PrefixLayer(PeftLayer):
    """Holds the site ``prefix`` of shape (2, kv_heads, P, head_dim): keys [0] and values [1]."""

    kind = "prefix"
    batched_samples = True

    def __init__(self, path: str, block: int | None, config: PrefixConfig, kv_heads: int, head_dim: int) -> None:
        super().__init__(path, block)
        self.shape = (2, kv_heads, config.length, head_dim)

    def site_specs(self) -> dict[str, Site]:
        return {"prefix": Site(self.shape, normal_init(0.02))}

    def key_values(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._weights is None:
            return None
        kv = self._weights["prefix"].to(like.dtype)  # (2, heads, P, head_dim), or (K, 2, ...) for K draws
        if self._samples is not None:  # K draws: sample k's prefix on its block of batch // K rows
            k = self._samples
            shape = (k, batch // k, *kv.shape[2:])
            return tuple(kv[:, i].unsqueeze(1).expand(shape).reshape(batch, *kv.shape[2:]) for i in (0, 1))
        expand = (batch, *kv.shape[1:])
        return kv[0].expand(expand), kv[1].expand(expand)

    def forward(self, *args, **kwargs):  # pragma: no cover - the attention function drives this layer
        raise RuntimeError("PrefixLayer is applied inside attention, not called directly")

    def remove(self, model: nn.Module) -> None:
        for module in model.modules():
            if getattr(module, _PREFIX_ATTR, None) is self:
                object.__delattr__(module, _PREFIX_ATTR)


def _visible_mask(attention_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor,
                  causal: bool) -> torch.Tensor:
    """The mask the model meant, made explicit (boolean or additive float), shape (B|1, 1, Lq, Lk)."""
    if attention_mask is not None:
        return attention_mask
    lq, lk = query.shape[2], key.shape[2]
    if causal and lq > 1:
        offset = lk - lq  # cached keys in front, if any
        rows = torch.arange(lq, device=key.device)[:, None] + offset
        return (rows >= torch.arange(lk, device=key.device)[None, :]).view(1, 1, lq, lk)
    return torch.ones(1, 1, lq, lk, dtype=torch.bool, device=key.device)


def prefix_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs):
    """SDPA with the module's bound prefix prepended to ``key``/``value`` (batch, heads, L, head_dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = getattr(module, _PREFIX_ATTR, None)
    prefix = layer.key_values(key.shape[0], key) if layer is not None else None
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    causal = kwargs.pop("is_causal", None)
    causal = getattr(module, "is_causal", False) if causal is None else causal
    mask = _visible_mask(attention_mask, query, key, bool(causal))
    pad_shape = (*mask.shape[:-1], prefix[0].shape[2])
    if mask.dtype == torch.bool:
        pad = torch.ones(pad_shape, dtype=torch.bool, device=mask.device)
    else:  # additive float mask: 0 means visible
        pad = torch.zeros(pad_shape, dtype=mask.dtype, device=mask.device)
    mask = torch.cat([pad, mask], dim=-1)
    key = torch.cat([prefix[0], key], dim=2)
    value = torch.cat([prefix[1], value], dim=2)
    return sdpa_attention_forward(module, query, key, value, mask, is_causal=False, **kwargs)


def routes_attention(model: nn.Module | type) -> bool:
    """Whether a model (or its class) runs attention through transformers' registry, which our prefix needs."""
    return bool(getattr(model, "_supports_attention_backend", False))


def require_attention_interface(backbone: nn.Module) -> None:
    """Raise a clear error unless ``backbone`` routes attention through transformers' registry."""
    if not routes_attention(backbone):
        raise ConfigError(
            f"prefix-tuning needs a model whose attention runs through transformers' AttentionInterface "
            f"(BERT, RoBERTa, DistilBERT, GPT-2, Llama, ...); {type(backbone).__name__} does not: "
            "drop 'prefix' from the PEFT parts or choose another backbone")


def enable_prefix_attention(backbone: nn.Module) -> None:
    """Register our attention function and switch ``backbone`` to it, or raise a clear error."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    require_attention_interface(backbone)
    AttentionInterface.register(ATTN_NAME, prefix_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    backbone.set_attn_implementation(ATTN_NAME)


def attach_prefix(attention: nn.Module, layer: PrefixLayer) -> None:
    # Stored outside nn.Module's registry: the layer holds no parameters and must not become a child.
    object.__setattr__(attention, _PREFIX_ATTR, layer)


def add_prefixes(target: Target, cfg: PrefixConfig) -> list[PeftLayer]:
    """A prefix on the self-attention of each chosen block, through the attention registry."""
    model = target.model
    require_attention_interface(model)
    chosen = target.chosen(cfg.layers, "prefix")
    rel = target.arch.attention
    found = [dict(target.blocks[i].named_modules()).get(rel) if rel else None for i in chosen]
    if any(f is None for f in found):
        raise ConfigError(f"prefix-tuning needs self-attention, but {type(model).__name__} has none at "
                          f"{rel!r} in its blocks; drop 'prefix' from the PEFT parts")
    enable_prefix_attention(model)
    c = model.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    added: list[PeftLayer] = []
    for i, attention in zip(chosen, found):
        layer = PrefixLayer(f"{target.path}.{i}.{rel}", i, cfg, kv_heads, head_dim)
        attach_prefix(attention, layer)
        added.append(layer)
    return added


register_peft_kind("prefix", PrefixConfig, add_prefixes)
