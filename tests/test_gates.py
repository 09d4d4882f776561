"""Gated LoRA: the nested quantizer, rank gates, plain LoRA when every gate is open, and bit operations."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_bert, token_batch
from torch import nn

from pyro_bhpeft import LoraConfig, PeftConfig, fit, predict, priors
from pyro_bhpeft.guides import MeanField
from pyro_bhpeft.models import SequenceClassifier
from pyro_bhpeft.layers.gates import (OPEN_LOGIT, GatedLoraConfig, GatedLoraLinear, bit_operations, gate_summary,
                                    gate_value, hard_gates, quantize_levels, quantize_nested)
from pyro_bhpeft.layers.lora import LoraLinear
from pyro_bhpeft.posterior import Posterior

BITS = (2, 4, 8, 16)


def _pair(seed=0, r=4):
    torch.manual_seed(seed)
    base = nn.Linear(6, 5)
    cfg = GatedLoraConfig(r=r)
    gated, plain = GatedLoraLinear(base, "x", 0, cfg), LoraLinear(base, "x", 0, LoraConfig(r=r))
    a, b = torch.randn(r, 6), torch.randn(5, r)
    return gated, plain, a, b, torch.randn(3, 6)


def _open(r=4, levels=3):
    return {"rank_gate": torch.full((r,), OPEN_LOGIT), "bit_gate_A": torch.full((levels,), OPEN_LOGIT),
            "bit_gate_B": torch.full((levels,), OPEN_LOGIT)}


def test_with_every_gate_open_the_layer_is_plain_lora_bit_for_bit():
    gated, plain, a, b, x = _pair()
    gated.bind({"lora_A": a, "lora_B": b, **_open()})
    plain.bind({"lora_A": a, "lora_B": b})
    with torch.no_grad():  # prediction: no relaxation noise
        assert torch.equal(gated(x), plain(x))
    assert torch.equal(quantize_nested(a, torch.ones(3), BITS), a)  # full precision: exact


@pytest.mark.parametrize("logit", [0.0, 1.0, -2.0])
def test_fitting_adds_the_hard_concretes_logistic_noise_with_its_exact_zero_and_one_masses(logit):
    # gate = clamp(1.2 sigmoid((g + L) / t) - 0.1, 0, 1) with L standard logistic: exactly 0 when
    # L <= t log(1/11) - g, exactly 1 when L >= t log 11 - g
    n, t = 40_000, 2.0 / 3.0
    layer = GatedLoraLinear(nn.Linear(2, 2), "x", 0, GatedLoraConfig(r=n))
    g = {"rank_gate": torch.full((n,), logit), "bit_gate_A": torch.zeros(3), "bit_gate_B": torch.zeros(3)}
    torch.manual_seed(0)
    z = layer.gates(g)["rank_gate"]
    log11 = torch.log(torch.tensor(11.0))
    assert (z == 0).float().mean().item() == pytest.approx(torch.sigmoid(-t * log11 - logit).item(), abs=0.01)
    assert (z == 1).float().mean().item() == pytest.approx(torch.sigmoid(logit - t * log11).item(), abs=0.01)
    with torch.no_grad():  # prediction: the noise-free gate
        assert torch.equal(layer.gates(g)["rank_gate"], gate_value(g["rank_gate"], t))
    quiet = GatedLoraLinear(nn.Linear(2, 2), "x", 0, GatedLoraConfig(r=n, noise="none"))
    assert torch.equal(quiet.gates(g)["rank_gate"], gate_value(g["rank_gate"], t))


def test_an_unknown_gate_noise_is_refused_in_one_line():
    from pyro_bhpeft.config import ConfigError

    with pytest.raises(ConfigError, match=r"^gated LoRA noise must be one of logistic, none, got 'gauss'$"):
        GatedLoraConfig(noise="gauss")


def test_each_quantization_level_at_least_halves_the_error_per_added_bit():
    w = torch.randn(64, 48)
    errors = [float((w - level).abs().max()) for level in quantize_levels(w, BITS)]
    for (low, high), (e_low, e_high) in zip(zip(BITS, BITS[1:]), zip(errors, errors[1:])):
        assert e_high <= e_low / 2 ** (high - low)
    assert errors[0] <= float(w.abs().max()) / 3 + 1e-6  # 2 bits: half of the step 2a/3
    closed = quantize_nested(w, torch.tensor([0.0, 1.0, 1.0]), BITS)  # the 4-bit gate closed: 2 bits only
    torch.testing.assert_close(closed, quantize_levels(w, BITS)[0])
    eight = quantize_nested(w, torch.tensor([1.0, 1.0, 0.0]), BITS)  # the last gate closed: 8 bits
    torch.testing.assert_close(eight, quantize_levels(w, BITS)[2])


def test_a_closed_rank_gate_removes_its_component():
    gated, plain, a, b, x = _pair()
    gates = _open()
    gates["rank_gate"][1] = -OPEN_LOGIT
    gated.bind({"lora_A": a, "lora_B": b, **gates})
    a_without = a.clone()
    a_without[1] = 0
    plain.bind({"lora_A": a_without, "lora_B": b})
    with torch.no_grad():
        torch.testing.assert_close(gated(x), plain(x))
    assert float(gate_value(torch.tensor(-OPEN_LOGIT), 2 / 3)) == 0.0  # exactly closed, not merely small


def test_bit_operations_match_a_hand_count():
    rows = [{"rank": 2, "in": 4, "out": 3, "bits_A": 4, "bits_B": 8}, {"rank": 0, "in": 9, "out": 9, "bits_A": 16,
                                                                         "bits_B": 16}]
    assert bit_operations(rows) == 2 * (4 * 4 + 3 * 8) * 16  # a closed layer costs nothing


def _model():
    cfg = GatedLoraConfig(r=3)
    return SequenceClassifier(tiny_bert(), PeftConfig(lora=None, **{"gated-lora": cfg}), priors.Flat(), num_labels=2)


def test_gate_summary_reads_ranks_and_bits_from_the_gate_logits():
    model = _model()
    locs = {name: v for name, v in model.initial_values().items()}
    first = model.peft_layers[0].path
    locs[f"{first}.rank_gate"] = torch.tensor([3.0, -3.0, 3.0])
    locs[f"{first}.bit_gate_A"] = torch.tensor([3.0, -3.0, 3.0])  # 8 bits needs the 4-bit gate open too
    rows = gate_summary(model, locs)
    assert rows[0] == {"layer": first, "block": 0, "in": 32, "out": 32, "rank": 2, "bits_A": 4, "bits_B": 16}
    assert all(r["rank"] == 3 and r["bits_A"] == 16 for r in rows[1:])


def test_gates_are_random_sites_that_fit_save_and_predict_hard(tmp_path):
    model = _model()
    batch, labels = token_batch(8), torch.arange(8) % 2
    guide = MeanField(model, deterministic=("*.lora_A", "*.lora_B", "head.*"), scale_param="log")
    result = fit(model, guide, [(batch, labels)], num_data=8, epochs=20, lr=0.05, scale_lr=0.05, progress=False)
    gate_sites = [n for n, m in result.posterior.marginals().items() if "gate" in n]
    assert gate_sites and all(result.posterior.marginals()[n].scale is not None for n in gate_sites)
    means = {n: m.loc for n, m in result.posterior.marginals().items()}
    assert any(float(means[n].mean()) < OPEN_LOGIT for n in gate_sites)  # the N(rank_prior, 1) prior pulls the open start down
    result.posterior.save(tmp_path / "run")
    loaded = Posterior.load(tmp_path / "run", backbone=tiny_bert())
    with hard_gates(loaded.model):
        hard = predict(loaded, [(batch, labels)], num_samples=0)
    assert torch.isfinite(torch.as_tensor(hard.probs)).all() and hard.probs.shape == (8, 2)


def test_gate_lr_moves_only_the_gate_logits_at_their_own_rate():
    """With lr 0 for everything else, one Adam step moves each gate logit by its gate_lr and nothing else;
    a pattern matching no site is refused in one line."""
    from pyro_bhpeft.config import ConfigError
    from pyro_bhpeft.recipe import Recipe

    batch, labels = token_batch(8), torch.arange(8) % 2
    site_lr = Recipe(gate_lr=0.3).site_lr()
    model = _model()
    guide = MeanField(model, deterministic=("*.lora_A", "*.lora_B", "head.*"), scale_param="log")
    fit(model, guide, [(batch, labels)], num_data=8, max_steps=1, lr=1e-12, scale_lr=1e-12, progress=False)
    before = {n: m.loc.clone() for n, m in Posterior(model, guide).marginals().items()}
    fit(model, guide, [(batch, labels)], num_data=8, max_steps=1, lr=0.0, scale_lr=0.0, site_lr=site_lr,
        clip_norm=None, progress=False)
    after = {n: m.loc for n, m in Posterior(model, guide).marginals().items()}
    for name in before:
        step = (after[name] - before[name]).abs()
        if "gate" in name:  # Adam's first step is lr * sign(gradient): every gate logit moved by 0.3
            torch.testing.assert_close(step, torch.full_like(step, 0.3), atol=1e-4, rtol=0)
        else:
            assert torch.equal(after[name], before[name]), name
    with pytest.raises(ConfigError, match="no site of the guide matches"):
        fit(model, guide, [(batch, labels)], num_data=8, max_steps=1, site_lr={"*.nothing": 1.0}, progress=False)
    with pytest.raises(ConfigError, match="gate_lr must be positive"):
        Recipe(gate_lr=0.0)


def test_gated_lora_or_delta_beside_lora_on_the_same_layers_is_refused_in_one_line():
    from pyro_bhpeft.config import ConfigError
    from pyro_bhpeft.layers.delta import DeltaConfig

    for extra in ({"gated-lora": GatedLoraConfig(r=2)}, {"delta": DeltaConfig()}):
        with pytest.raises(ConfigError, match="already wrapped by another PEFT kind.*drop lora"):
            SequenceClassifier(tiny_bert(), PeftConfig(lora=LoraConfig(r=2), **extra), priors.Flat(), num_labels=2)


def test_the_gates_posterior_becomes_the_next_rounds_prior():
    """A gate site carries its own N(rank_prior, 1) prior, but a posterior-derived prior that knows the site wins: the
    next round starts from what the gates learned."""
    from pyro_bhpeft import posterior_prior

    model = _model()
    batch, labels = token_batch(8), torch.arange(8) % 2
    guide = MeanField(model, deterministic=("*.lora_A", "*.lora_B", "head.*"), scale_param="log")
    result = fit(model, guide, [(batch, labels)], num_data=8, epochs=5, lr=0.05, progress=False)
    name = "encoder.layer.0.attention.self.query.rank_gate"
    marginal = result.posterior.marginals()[name]
    nxt = SequenceClassifier(tiny_bert(), model.peft_config, posterior_prior(result.posterior), num_labels=2)
    prior = nxt.site_prior(name).distribution(name, (3,))
    torch.testing.assert_close(prior.base_dist.loc, marginal.loc)
    torch.testing.assert_close(prior.base_dist.scale, marginal.scale)
    own = GatedLoraConfig().rank_prior
    assert model.site_prior(name).distribution(name, (3,)).base_dist.loc.eq(own).all()  # round 1: its own prior
