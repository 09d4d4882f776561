"""Priors (densities, per-site overrides, serialisation, validation) and configuration errors that name the
problem and the fix."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from transformers import MPNetConfig, MPNetModel

from helpers import VOCAB
from pyro_bhpeft import AdapterConfig, ConfigError, LoraConfig, PeftConfig, PrefixConfig, priors
from pyro_bhpeft.guides import LowRank
from pyro_bhpeft.models import MultipleChoice, Regressor, SequenceClassifier
from pyro_bhpeft.layers import peft_layers

X = torch.tensor([[-2.5, -0.3, 0.0, 0.7], [1.1, 3.0, -0.05, 12.0], [0.2, -7.0, 0.4, 1e-3]])

PRIOR_CASES = [
    (priors.Normal(0.5, loc=0.3), torch.distributions.Normal(0.3, 0.5)),
    (priors.Laplace(0.3, loc=-0.2), torch.distributions.Laplace(-0.2, 0.3)),
    (priors.StudentT(3.0, 2.0, loc=1.0), torch.distributions.StudentT(3.0, 1.0, 2.0)),
    (priors.StudentT(df=0.7, scale=0.1), torch.distributions.StudentT(0.7, 0.0, 0.1)),
]


@pytest.mark.parametrize("ours, reference", PRIOR_CASES, ids=["normal", "laplace", "student-t", "student-t-df<1"])
def test_log_prob_matches_torch_distributions(ours, reference):
    d = ours.distribution("encoder.layer.0.attention.self.query.lora_A", (3, 4))
    assert tuple(d.event_shape) == (3, 4) and tuple(d.batch_shape) == ()
    assert torch.allclose(d.log_prob(X), reference.log_prob(X).sum(), rtol=1e-6)
    assert torch.allclose(d.log_prob(X[:2, :3].reshape(3, 2).repeat(1, 2)),
                          reference.log_prob(X[:2, :3].reshape(3, 2).repeat(1, 2)).sum(), rtol=1e-6)


def test_per_site_override_first_matching_glob_wins():
    lora_b, any_lora, head, prefix, default = (priors.Normal(0.01), priors.Laplace(0.5), priors.StudentT(4.0, 2.0),
                                               priors.Normal(0.2), priors.Normal(1.0))
    per = priors.PerSite(default, {"encoder.*.lora_B": lora_b, "*.lora_*": any_lora, "head.*": head,
                                   "*.prefix": prefix, "head.bias": priors.Normal(99.0)})
    assert per.resolve("encoder.layer.0.attention.self.query.lora_B") == lora_b  # also matches "*.lora_*"
    assert per.resolve("encoder.layer.1.attention.self.value.lora_A") == any_lora
    assert per.resolve("layers.0.self_attn.q_proj.lora_B") == any_lora  # not under encoder
    assert per.resolve("head.bias") == head  # the later exact pattern never gets a chance
    assert per.resolve("layers.1.self_attn.prefix") == prefix
    assert per.resolve("encoder.layer.0.output.dense.adapter_up") == default
    assert per.resolve("Head.weight") == default  # patterns are case-sensitive
    site = "encoder.layer.1.attention.self.value.lora_A"
    assert torch.equal(per.distribution(site, (3, 4)).log_prob(X), any_lora.distribution(site, (3, 4)).log_prob(X))


def test_a_model_samples_each_site_from_its_resolved_prior(make_bert, make_tokens):
    per = priors.PerSite(priors.Normal(1.0), {"*.lora_B": priors.Normal(0.05), "head.*": priors.Laplace(0.3)})
    model = SequenceClassifier(make_bert(), PeftConfig(LoraConfig(r=2)), per)
    trace = pyro.poutine.trace(model).get_trace(make_tokens(), torch.zeros(6, dtype=torch.long))
    for name in model.sites:
        base = trace.nodes[name]["fn"].base_dist
        if name.endswith("lora_B"):
            assert isinstance(base, torch.distributions.Normal) and torch.all(base.scale == 0.05)
        elif name.startswith("head."):
            assert isinstance(base, torch.distributions.Laplace) and torch.all(base.scale == 0.3)
        else:
            assert isinstance(base, torch.distributions.Normal) and torch.all(base.scale == 1.0)


@pytest.mark.parametrize("prior", [
    priors.Normal(0.5, loc=0.3),
    priors.Laplace(0.3),
    priors.StudentT(3.0, 2.0, loc=-1.0),
    priors.PerSite(priors.Normal(1.0), {"*.prefix": priors.Laplace(0.1), "head.*": priors.StudentT(5.0)}),
    priors.PerSite(priors.Laplace(2.0), {
        "encoder.*": priors.PerSite(priors.Normal(0.1), {"*.lora_B": priors.Normal(0.01)}),
        "*": priors.StudentT(3.0)}),
], ids=["normal", "laplace", "student-t", "per-site", "per-site-nested"])
def test_prior_round_trips_through_json(prior):
    saved = json.loads(json.dumps(prior.to_dict()))  # what config.json holds
    again = priors.prior_from_dict(saved, prior.tensors())
    assert again == prior and type(again) is type(prior)
    if isinstance(prior, priors.PerSite):
        assert list(again.overrides) == list(prior.overrides)  # order decides which glob wins
        nested = again.resolve("encoder.layer.0.attention.self.query.lora_B")
        assert nested.distribution("x", (3, 4)).log_prob(X) == prior.resolve(
            "encoder.layer.0.attention.self.query.lora_B").distribution("x", (3, 4)).log_prob(X)


@pytest.mark.parametrize("make, needle", [
    (lambda: priors.Normal(0.0), "Normal prior scale must be positive"),
    (lambda: priors.Normal(-1.0), "positive"),
    (lambda: priors.Normal(float("nan")), "positive"),
    (lambda: priors.Laplace(0.0), "Laplace prior scale must be positive"),
    (lambda: priors.StudentT(3.0, scale=-2.0), "Student-t prior scale must be positive"),
    (lambda: priors.StudentT(df=0.0), "degrees of freedom"),
], ids=["normal-0", "normal-negative", "normal-nan", "laplace-0", "student-scale", "student-df"])
def test_invalid_prior_parameters_raise(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


def test_unknown_prior_type_is_named():
    with pytest.raises(ValueError, match="unknown prior type 'cauchy'.*normal"):
        priors.prior_from_dict({"type": "cauchy", "scale": 1.0})


def test_peft_config_round_trips_and_hybrid_has_all_three_parts():
    cfg = PeftConfig(LoraConfig(r=4, lora_alpha=8.0, target_modules=("query", "key"), layers=(0, 1)),
                     AdapterConfig(bottleneck=8, activation="relu", layers=(1,)), PrefixConfig(length=5))
    assert PeftConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert PeftConfig.hybrid(r=2, bottleneck=3, prefix_length=4).kinds == ("lora", "adapter", "prefix")
    assert PeftConfig().kinds == ("lora",) and PeftConfig(lora=None).kinds == ()
    assert LoraConfig(target_modules="query").target_modules == ("query",)
    old = {"lora": {"r": 4, "alpha": 8.0, "targets": ["query"], "layers": None, "dropout": 0.1}}  # a run saved by 0.1
    assert PeftConfig.from_dict(old).lora == LoraConfig(r=4, lora_alpha=8.0, target_modules=("query",), lora_dropout=0.1)
    assert LoraConfig(r=4, lora_alpha=8.0).scaling == 2.0


def tiny_mpnet() -> MPNetModel:
    return MPNetModel(MPNetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64))


@pytest.mark.parametrize("make_bad, needle", [
    (lambda: LoraConfig(r=0), "LoRA rank r must be a positive integer, got 0"),
    (lambda: LoraConfig(lora_alpha=0.0), "lora_alpha must be positive"),
    (lambda: LoraConfig(target_modules=()), "target_modules is empty"),
    (lambda: LoraConfig(layers=(-1,)), "block indices >= 0"),
    (lambda: AdapterConfig(bottleneck=0), "adapter bottleneck must be a positive integer, got 0"),
    (lambda: AdapterConfig(activation="swish"), "gelu, relu, tanh, silu"),
    (lambda: PrefixConfig(length=0), "prefix length must be a positive integer"),
    (lambda: PeftConfig(lora=AdapterConfig()), "PeftConfig.lora must be a LoraConfig"),
], ids=["lora-rank-0", "lora-alpha-0", "lora-no-targets", "negative-layer", "adapter-bottleneck-0",
        "adapter-activation", "prefix-length-0", "peft-wrong-type"])
def test_invalid_config_values_raise_config_error(make_bad, needle):
    with pytest.raises(ConfigError, match=needle):
        make_bad()


@pytest.mark.parametrize("make_bad, needle", [
    (lambda b: SequenceClassifier(b, PeftConfig(LoraConfig(target_modules=("q_proj",)))),
     r"match no linear layer of BertModel; its linear layers are named \['dense', 'key', 'query', 'value'\]"),
    (lambda b: SequenceClassifier(b, PeftConfig(LoraConfig(layers=(0, 2)))),
     r"LoRA layers \[2\] do not exist: the model has blocks 0..1"),
    (lambda b: SequenceClassifier(b, PeftConfig(None, AdapterConfig(layers=(7,)))), r"adapter layers \[7\]"),
    (lambda b: SequenceClassifier(b, PeftConfig(None, None, PrefixConfig(layers=(2,)))), r"prefix layers \[2\]"),
    (lambda b: SequenceClassifier(b, pooling="max"), "pooling 'max' is not one of auto, mean, cls, last"),
    (lambda b: SequenceClassifier(b, num_labels=1), "num_labels must be at least 2, got 1"),
    (lambda b: Regressor(b, noise_scale=0.0), "must be positive"),
    (lambda b: LowRank(SequenceClassifier(b), rank=0), "LowRank rank must be a positive integer, got 0"),
], ids=["unknown-lora-target", "lora-layer-out-of-range", "adapter-layer-out-of-range", "prefix-layer-out-of-range",
        "bad-pooling", "one-label", "zero-noise", "lowrank-rank-0"])
def test_invalid_model_choices_raise_config_error(make_bad, needle, make_bert):
    with pytest.raises(ConfigError, match=needle):
        make_bad(make_bert())


def test_prefix_on_a_model_without_the_attention_interface_names_the_supported_families():
    with pytest.raises(ConfigError, match="AttentionInterface.*BERT.*Llama.*MPNetModel does not"):
        SequenceClassifier(tiny_mpnet(), PeftConfig(None, None, PrefixConfig(length=2)))


def test_injecting_twice_into_one_backbone_is_refused(make_bert):
    backbone = make_bert()
    MultipleChoice(backbone, PeftConfig(LoraConfig(r=2)))
    with pytest.raises(ConfigError, match="already carries PEFT layers; load a fresh one"):
        SequenceClassifier(backbone, PeftConfig(None, AdapterConfig()))


@pytest.mark.parametrize("family, peft", [
    ("bert", PeftConfig(LoraConfig(r=2), AdapterConfig(bottleneck=2), PrefixConfig(length=2, layers=(5,)))),
    ("mpnet", PeftConfig(LoraConfig(r=2, target_modules=("q", "v")), AdapterConfig(bottleneck=2), PrefixConfig(length=2))),
])
def test_a_refused_config_leaves_the_backbone_untouched(family, peft, make_bert):
    """A config error must not half-inject: the same backbone should still take a corrected config."""
    backbone = make_bert() if family == "bert" else tiny_mpnet()
    modules = dict(backbone.named_modules())
    with pytest.raises(ConfigError):
        SequenceClassifier(backbone, peft)
    assert peft_layers(backbone) == []
    after = dict(backbone.named_modules())
    assert after.keys() == modules.keys() and all(after[k] is modules[k] for k in modules)  # the same objects
    assert getattr(backbone.config, "_attn_implementation", "sdpa") != "bhpeft_prefix"
    SequenceClassifier(backbone, PeftConfig(peft.lora, peft.adapter))  # the corrected config is accepted


@pytest.mark.parametrize("make_bad", [lambda: LoraConfig(r=2.5), lambda: AdapterConfig(bottleneck=3.5),
                                      lambda: PrefixConfig(length=1.5)], ids=["lora-r", "bottleneck", "prefix-length"])
def test_non_integer_sizes_raise_config_error(make_bad):
    with pytest.raises(ConfigError, match="integer"):
        make_bad()
