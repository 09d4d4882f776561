"""PEFT layers: exact site names and shapes, known answers for each layer, exact identity when nothing is
bound (or at LoRA/adapter init), and prefix attention that keeps padding out and causality in."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.nn import functional as F

from pyro_bhpeft import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig
from pyro_bhpeft.models import SequenceClassifier
from pyro_bhpeft.layers import AdapterLayer, LoraLinear, peft_layers
from pyro_bhpeft.layers.prefix import ATTN_NAME, prefix_attention

TARGETS = {"bert": ("query", "value"), "llama": ("q_proj", "v_proj")}

# Tiny BERT (hidden 32, 4 heads of 8), hybrid LoRA r=2 on query/value + adapter bottleneck 4 + prefix length 3,
# 3 labels: every site, in sampling order (LoRA, adapters, prefixes, head), with its documented shape.
BERT_HYBRID_SITES = [
    ("encoder.layer.0.attention.self.query.lora_A", (2, 32)),
    ("encoder.layer.0.attention.self.query.lora_B", (32, 2)),
    ("encoder.layer.0.attention.self.value.lora_A", (2, 32)),
    ("encoder.layer.0.attention.self.value.lora_B", (32, 2)),
    ("encoder.layer.1.attention.self.query.lora_A", (2, 32)),
    ("encoder.layer.1.attention.self.query.lora_B", (32, 2)),
    ("encoder.layer.1.attention.self.value.lora_A", (2, 32)),
    ("encoder.layer.1.attention.self.value.lora_B", (32, 2)),
    ("encoder.layer.0.output.dense.adapter_down", (4, 32)),
    ("encoder.layer.0.output.dense.adapter_down_bias", (4,)),
    ("encoder.layer.0.output.dense.adapter_up", (32, 4)),
    ("encoder.layer.0.output.dense.adapter_up_bias", (32,)),
    ("encoder.layer.1.output.dense.adapter_down", (4, 32)),
    ("encoder.layer.1.output.dense.adapter_down_bias", (4,)),
    ("encoder.layer.1.output.dense.adapter_up", (32, 4)),
    ("encoder.layer.1.output.dense.adapter_up_bias", (32,)),
    ("encoder.layer.0.attention.self.prefix", (2, 4, 3, 8)),  # (keys|values, kv_heads, P, head_dim)
    ("encoder.layer.1.attention.self.prefix", (2, 4, 3, 8)),
    ("head.weight", (3, 32)),
    ("head.bias", (3,)),
]

# Tiny Llama (hidden 32, 4 query heads and 2 key/value heads of 8): v_proj maps 32 -> 16.
LLAMA_HYBRID_SITES = [
    ("layers.0.self_attn.q_proj.lora_A", (2, 32)),
    ("layers.0.self_attn.q_proj.lora_B", (32, 2)),
    ("layers.0.self_attn.v_proj.lora_A", (2, 32)),
    ("layers.0.self_attn.v_proj.lora_B", (16, 2)),
    ("layers.1.self_attn.q_proj.lora_A", (2, 32)),
    ("layers.1.self_attn.q_proj.lora_B", (32, 2)),
    ("layers.1.self_attn.v_proj.lora_A", (2, 32)),
    ("layers.1.self_attn.v_proj.lora_B", (16, 2)),
    ("layers.0.mlp.down_proj.adapter_down", (4, 32)),
    ("layers.0.mlp.down_proj.adapter_down_bias", (4,)),
    ("layers.0.mlp.down_proj.adapter_up", (32, 4)),
    ("layers.0.mlp.down_proj.adapter_up_bias", (32,)),
    ("layers.1.mlp.down_proj.adapter_down", (4, 32)),
    ("layers.1.mlp.down_proj.adapter_down_bias", (4,)),
    ("layers.1.mlp.down_proj.adapter_up", (32, 4)),
    ("layers.1.mlp.down_proj.adapter_up_bias", (32,)),
    ("layers.0.self_attn.prefix", (2, 2, 3, 8)),
    ("layers.1.self_attn.prefix", (2, 2, 3, 8)),
    ("head.weight", (3, 32)),
    ("head.bias", (3,)),
]


def hybrid(family: str) -> PeftConfig:
    return PeftConfig(LoraConfig(r=2, target_modules=TARGETS[family]), AdapterConfig(bottleneck=4), PrefixConfig(length=3))


def latent_sites(trace) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(site["value"].shape)) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


@pytest.mark.parametrize("family, expected", [("bert", BERT_HYBRID_SITES), ("llama", LLAMA_HYBRID_SITES)])
def test_traced_sites_are_exactly_the_documented_names_shapes_and_order(family, expected, make_backbone,
                                                                        make_tokens):
    model = SequenceClassifier(make_backbone(family), hybrid(family), num_labels=3)
    batch, labels = make_tokens(), torch.tensor([0, 1, 2, 0, 1, 2])
    trace = pyro.poutine.trace(model).get_trace(batch, labels)
    assert latent_sites(trace) == expected
    assert [(n, s.shape) for n, s in model.sites.items()] == expected
    observed = [n for n, s in trace.nodes.items() if s["type"] == "sample" and s["is_observed"]]
    assert observed == ["obs"]
    assert torch.equal(trace.nodes["obs"]["value"], labels)
    for name, shape in expected:  # each site is one sample statement whose event is the whole tensor
        fn = trace.nodes[name]["fn"]
        assert tuple(fn.event_shape) == shape and tuple(fn.batch_shape) == ()


def test_layers_option_restricts_each_kind_to_the_chosen_blocks(make_bert):
    peft = PeftConfig(LoraConfig(r=1, target_modules=("key",), layers=(1,)), AdapterConfig(bottleneck=2, layers=(0,)),
                      PrefixConfig(length=1, layers=(1,)))
    model = SequenceClassifier(make_bert(), peft)
    assert {n: s.shape for n, s in model.sites.items()} == {
        "encoder.layer.1.attention.self.key.lora_A": (1, 32),
        "encoder.layer.1.attention.self.key.lora_B": (32, 1),
        "encoder.layer.0.output.dense.adapter_down": (2, 32),
        "encoder.layer.0.output.dense.adapter_down_bias": (2,),
        "encoder.layer.0.output.dense.adapter_up": (32, 2),
        "encoder.layer.0.output.dense.adapter_up_bias": (32,),
        "encoder.layer.1.attention.self.prefix": (2, 4, 1, 8),
        "head.weight": (2, 32),
        "head.bias": (2,),
    }
    assert sorted(type(layer).__name__ for layer in peft_layers(model.backbone)) == [
        "AdapterLayer", "LoraLinear", "PrefixLayer"]


def test_lora_layer_computes_w_x_plus_scaled_b_a_x():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    layer = LoraLinear(base, "blk.lin", 0, LoraConfig(r=2, lora_alpha=3.0))
    x = torch.randn(4, 6, 5)
    a, b = torch.randn(2, 5), torch.randn(3, 2)
    assert torch.equal(layer(x), base(x))  # unbound: the frozen layer, bit for bit
    layer.bind({"lora_A": a, "lora_B": b})
    expected = x @ base.weight.T + base.bias + 1.5 * (x @ (b @ a).T)  # alpha / r = 1.5
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer.bind(None)
    assert torch.equal(layer(x), base(x))


def test_delta_layer_computes_w_x_plus_delta_x_and_k_stacked_draws_on_their_rows():
    from pyro_bhpeft.layers.delta import DeltaConfig, DeltaLinear

    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    layer = DeltaLinear(base, "blk.lin", 0, DeltaConfig())
    x, delta = torch.randn(4, 6, 5), torch.randn(3, 5)
    assert torch.equal(layer(x), base(x))
    layer.bind({"delta": delta})
    assert torch.allclose(layer(x), x @ (base.weight + delta).T + base.bias, atol=1e-5)
    deltas = torch.randn(2, 3, 5)  # two draws: rows 0-3 see the first, rows 4-7 the second
    layer.bind({"delta": deltas}, samples=2)
    out = layer(torch.cat([x, x]))
    for k in range(2):
        assert torch.allclose(out[4 * k:4 * (k + 1)], x @ (base.weight + deltas[k]).T + base.bias, atol=1e-5)
    layer.bind(None)


@pytest.mark.parametrize("activation, act", [("gelu", F.gelu), ("relu", F.relu), ("tanh", torch.tanh),
                                             ("silu", F.silu)])
def test_adapter_layer_adds_a_bottleneck_residual(activation, act):
    torch.manual_seed(0)
    base = nn.Linear(6, 8)
    layer = AdapterLayer(base, 8, "blk.out", 0, AdapterConfig(bottleneck=3, activation=activation))
    x = torch.randn(2, 5, 6)
    w = {"adapter_down": torch.randn(3, 8), "adapter_down_bias": torch.randn(3),
         "adapter_up": torch.randn(8, 3), "adapter_up_bias": torch.randn(8)}
    assert torch.equal(layer(x), base(x))
    layer.bind(w)
    h = base(x)
    expected = h + act(h @ w["adapter_down"].T + w["adapter_down_bias"]) @ w["adapter_up"].T + w["adapter_up_bias"]
    assert torch.allclose(layer(x), expected, atol=1e-5)


def _hidden(backbone, batch) -> torch.Tensor:
    with torch.no_grad():
        return backbone(**batch).last_hidden_state


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_unbound_layers_and_zero_initialised_deltas_leave_the_backbone_bit_identical(family, make_backbone,
                                                                                       make_tokens):
    batch = make_tokens()  # with padding in the mask
    plain = _hidden(make_backbone(family), batch)
    model = SequenceClassifier(make_backbone(family), hybrid(family), num_labels=3)
    assert model.backbone.config._attn_implementation == ATTN_NAME  # the prefix path is really in use
    assert torch.equal(_hidden(model.backbone, batch), plain)
    init = model.initial_values()
    assert all(init[n].abs().max() > 0 for n in init if n.endswith(("lora_A", "adapter_down", "prefix")))
    assert all(not init[n].any() for n in init if n.endswith(("lora_B", "adapter_up", "adapter_up_bias")))
    with model.bound({n: v for n, v in init.items() if not n.endswith("prefix")}):  # B = 0, adapter up = 0
        assert torch.equal(_hidden(model.backbone, batch), plain)
    with model.bound(init):  # the initial prefix is not zero: it does change the function
        assert not torch.allclose(_hidden(model.backbone, batch), plain, atol=1e-4)
    assert torch.equal(_hidden(model.backbone, batch), plain)  # unbound again after the block


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("padded", [True, False])
def test_prefix_attention_with_nothing_bound_is_plain_sdpa(family, padded, make_backbone, make_tokens):
    batch = make_tokens(pad=2 if padded else 0)
    plain_model = make_backbone(family)
    assert plain_model.config._attn_implementation == "sdpa"
    model = SequenceClassifier(make_backbone(family), PeftConfig(None, None, PrefixConfig(length=3)))
    assert model.backbone.config._attn_implementation == ATTN_NAME
    assert torch.equal(_hidden(model.backbone, batch), _hidden(plain_model, batch))


def _random_weights(model, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s.shape, generator=g) for n, s in model.sites.items()}


@pytest.mark.parametrize("family, side", [("bert", "right"), ("llama", "right"), ("llama", "left")])
def test_bound_prefix_does_not_let_padding_leak(family, side, make_backbone, make_tokens):
    model = SequenceClassifier(make_backbone(family), hybrid(family), num_labels=3)
    batch = make_tokens(pad=0)
    real = torch.ones(6, 7, dtype=torch.bool)
    if side == "right":
        real[:, 5:] = False
    else:
        real[:, :2] = False
    batch["attention_mask"] = real.long()
    changed = dict(batch, input_ids=torch.where(real, batch["input_ids"], torch.full_like(real, 3, dtype=torch.long)))
    assert not torch.equal(changed["input_ids"], batch["input_ids"])
    with model.bound(_random_weights(model)):
        out, out_changed = _hidden(model.backbone, batch), _hidden(model.backbone, changed)
    assert torch.allclose(out[real], out_changed[real], atol=1e-6)
    assert not torch.allclose(out[~real], out_changed[~real], atol=1e-3)  # the change was real
    assert not torch.allclose(out[real], _hidden(model.backbone, batch)[real], atol=1e-3)  # and the prefix acts


@pytest.mark.parametrize("padded", [True, False])
def test_bound_prefix_keeps_llama_causal(padded, make_llama, make_tokens):
    model = SequenceClassifier(make_llama(), hybrid("llama"), num_labels=3)
    batch = make_tokens(pad=2 if padded else 0)
    for t in (0, 2, 4):
        later = dict(batch, input_ids=batch["input_ids"].clone())
        later["input_ids"][:, t + 1:] = (later["input_ids"][:, t + 1:] + 7) % 55 + 5  # every later token differs
        with model.bound(_random_weights(model)):
            out, out_later = _hidden(model.backbone, batch), _hidden(model.backbone, later)
        assert torch.allclose(out[:, :t + 1], out_later[:, :t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1:], out_later[:, t + 1:], atol=1e-3)


def _attention_module(model):
    layer = next(m for m in peft_layers(model.backbone) if m.kind == "prefix")
    return next(m for m in model.backbone.modules() if getattr(m, "bhpeft_prefix", None) is layer), layer


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_prefix_attention_equals_softmax_over_prefix_and_keys(family, make_backbone):
    """Known answer: softmax(q [P_k; K]^T / sqrt(d) + mask) [P_v; V], the prefix visible to every query."""
    model = SequenceClassifier(make_backbone(family), PeftConfig(None, None, PrefixConfig(length=3)))
    module, layer = _attention_module(model)
    heads, kv_heads, d, batch, length = 4, (2 if family == "llama" else 4), 8, 2, 5
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, length, d, generator=g)
    k, v = torch.randn(2, batch, kv_heads, length, d, generator=g)
    prefix = torch.randn(2, kv_heads, 3, d, generator=g)
    visible = torch.ones(batch, 1, length, length, dtype=torch.bool)
    visible[1, ..., 3:] = False  # the second sequence has two padded keys
    if family == "llama":
        visible &= torch.ones(length, length, dtype=torch.bool).tril()
    layer.bind({"prefix": prefix})
    try:
        out, _ = prefix_attention(module, q, k, v, visible, dropout=0.0, scaling=module.scaling)
    finally:
        layer.bind(None)
    group = heads // kv_heads  # query heads sharing one key/value head
    keys = torch.cat([prefix[0].expand(batch, -1, -1, -1), k], 2).repeat_interleave(group, 1)
    values = torch.cat([prefix[1].expand(batch, -1, -1, -1), v], 2).repeat_interleave(group, 1)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(d)  # (batch, heads, length, 3 + length)
    mask = torch.cat([torch.ones(batch, 1, length, 3, dtype=torch.bool), visible], -1)
    expected = (scores.masked_fill(~mask, float("-inf")).softmax(-1) @ values).transpose(1, 2)
    assert out.shape == (batch, length, heads, d)
    assert torch.allclose(out, expected, atol=1e-5)
