"""The guide contract: fit, predict, the next round's prior and saving read a guide only through it, so a
subclass of one of our guides behaves as its parent without registration, and each scale parameterisation
is one strategy object."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal

from helpers import tiny_bert, token_batch
from pyro_bhpeft import ConfigError, LoraConfig, PeftConfig, Posterior, fit, predict, priors
from pyro_bhpeft.continual import posterior_prior
from pyro_bhpeft.guides import (DEFAULT_SCALE_PARAM, GUIDES, SCALE_PARAMS, Delta, GuideKind, LowRank, MeanField,
                                PosteriorGuide, elbo_for, guide_config, is_point_mass, variance_parameters)
from pyro_bhpeft.models import SequenceClassifier

ROOT = Path(__file__).resolve().parent.parent
PEFT = PeftConfig(lora=LoraConfig(r=2))


class Tempered(MeanField):
    """A user's mean-field guide under a new name, never registered."""


class Joint(LowRank):
    """A user's low-rank guide under a new name, never registered."""


def _model():
    return SequenceClassifier(tiny_bert(), PEFT, priors.Normal(1.0), num_labels=2)


def _data():
    batch = token_batch(8)
    return [(batch, torch.arange(8) % 2)]


def _fit(guide_cls, **kwargs):
    model = _model()
    return fit(model, guide_cls(model, **kwargs), _data(), num_data=8, epochs=3, lr=0.05, seed=3, progress=False)


def test_an_unregistered_mean_field_subclass_fits_exactly_as_mean_field():
    ours, theirs = _fit(MeanField, init_scale=0.05), _fit(Tempered, init_scale=0.05)
    assert theirs.history == ours.history  # the same ELBO (analytic KL): bit-identical losses
    assert not any(k != k for k in theirs.kl)
    assert isinstance(Tempered(_model()), PosteriorGuide)


def test_an_unregistered_subclass_saves_and_loads(tmp_path):
    posterior = _fit(Tempered, init_scale=0.05).posterior
    assert guide_config(posterior.guide)["class"] == "Tempered"
    posterior.save(tmp_path / "run")
    loaded = Posterior.load(tmp_path / "run", backbone=tiny_bert())
    assert type(loaded.guide) is Tempered
    a = predict(posterior, _data(), num_samples=3, seed=1).probs
    assert torch.equal(a, predict(loaded, _data(), num_samples=3, seed=1).probs)


def test_a_foreign_guide_cannot_be_saved_but_fits_with_the_monte_carlo_elbo():
    model = _model()
    guide = AutoNormal(model)
    assert type(elbo_for(guide)) is Trace_ELBO and type(elbo_for(Tempered(model))) is TraceMeanField_ELBO
    with pytest.raises(TypeError, match="AutoNormal cannot"):
        guide_config(guide)


def test_point_mass_comes_from_the_guide_not_its_registration():
    model = _model()
    assert is_point_mass(Delta(model)) and is_point_mass(AutoDelta(model))
    assert not is_point_mass(MeanField(model)) and not is_point_mass(AutoNormal(model))
    with pytest.raises(ConfigError, match="Delta.point_mass is True"):
        GuideKind(Delta, lambda m, r: Delta(m), point_mass=False)
    assert GUIDES["map"].point_mass and GUIDES["map"].elbo is TraceMeanField_ELBO


def test_variance_parameters_are_the_scales_for_each_guide():
    model = _model()
    mf, lr = MeanField(model, deterministic=("*.lora_B",)), LowRank(model, rank=2)
    for guide in (mf, lr):
        guide(*_data()[0])
    random = [scale.shape for _, scale in mf.marginals().values() if scale is not None]
    assert [p.shape for p in variance_parameters(mf)] == random and len(random) < len(mf.marginals())
    assert {id(p) for p in variance_parameters(lr)} == {id(lr.scale_unconstrained), id(lr.cov_factor)}
    auto = AutoNormal(model)
    auto(*_data()[0])
    assert len(variance_parameters(auto)) == len([n for n, _ in auto.named_parameters() if "scale" in n]) > 0


def test_a_low_rank_subclass_still_gives_a_joint_prior():
    model = _model()
    posterior = fit(model, Joint(model, rank=2), _data(), num_data=8, epochs=1, progress=False).posterior
    prior = posterior_prior(posterior)
    assert prior.cov_factor is not None and len(prior.joint) == len(model.sites)


@pytest.mark.parametrize("name", ["log", "softplus", "rho2"])
def test_every_scale_parameterisation_starts_at_the_given_scale_and_round_trips(name):
    model = _model()
    guide = MeanField(model, init_scale=0.02, scale_param=name)
    guide(*_data()[0])
    for loc, scale in guide.marginals().values():
        assert torch.allclose(scale, torch.full_like(loc, 0.02))
    scale = torch.tensor([1e-3, 0.5, 2.0])
    param = SCALE_PARAMS[name]
    assert torch.allclose(param.to_scale(param.from_scale(scale)), scale)


def test_scale_parameterisations_known_values():
    raw = torch.tensor([0.1, 0.2])
    assert torch.allclose(SCALE_PARAMS["log"].to_scale(raw), raw.exp())
    assert torch.allclose(SCALE_PARAMS["rho2"].to_scale(raw), torch.tensor([0.01, 0.04]))
    assert torch.allclose(SCALE_PARAMS["rho2"].from_scale(torch.tensor([0.09])), torch.tensor([0.3]))


def test_mean_field_default_comes_from_one_place_and_old_configs_stay_softplus():
    model = _model()
    assert DEFAULT_SCALE_PARAM in SCALE_PARAMS and MeanField(model).scale_param == DEFAULT_SCALE_PARAM == "log"
    assert MeanField.from_config(model, {"init_scale": 0.01, "deterministic": []}).scale_param == "softplus"
    with pytest.raises(ConfigError, match="unknown scale parameterisation 'exp'; choose one of log, softplus, rho2"):
        MeanField(model, scale_param="exp")


GUIDE_CLASSES = r"MeanField|LowRank|Delta|AutoDelta|AutoGuide|AutoNormal|AutoLowRankMultivariateNormal"


def test_no_guide_class_tests_outside_the_guides():
    found = []
    for folder in ("pyro_bhpeft", "models", "analysis"):
        for path in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(rf"isinstance\([^)]*\b({GUIDE_CLASSES})\b|type\([^)]*guide[^)]*\) is", line):
                    found.append(str(path.relative_to(ROOT)))
    assert not found, found
