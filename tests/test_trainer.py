"""fit as a small trainer: one options dataclass, the model steered by effect handlers (KL weight, data size,
flipout) instead of attributes, BLoB's split step without a second forward pass."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_bert, token_batch
from pyro_bhpeft import LoraConfig, PeftConfig, fit, priors
from pyro_bhpeft.guides import Delta, MeanField
from pyro_bhpeft.infer import FitOptions, KLStep
from pyro_bhpeft.models import SequenceClassifier

PEFT = PeftConfig(lora=LoraConfig(r=2))


def _model():
    return SequenceClassifier(tiny_bert(), PEFT, priors.Normal(1.0), num_labels=2)


def _data(n=8):
    return [(token_batch(n), torch.arange(n) % 2)]


def test_options_dataclass_and_keywords_give_the_same_fit():
    a, b = _model(), _model()
    kwargs = dict(num_data=8, epochs=3, lr=0.05, kl_weight=0.5, seed=2, progress=False)
    by_keywords = fit(a, MeanField(a), _data(), **kwargs).history
    by_options = fit(b, MeanField(b), _data(), FitOptions(**kwargs)).history
    assert by_keywords == by_options
    c = _model()
    assert fit(c, MeanField(c), _data(), FitOptions(**kwargs), kl_weight=0.0).history != by_keywords  # a change


def test_options_are_checked_in_one_place():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        FitOptions(epochs=0)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        FitOptions(max_steps=0)


def _spy_binds(model) -> list[set[str]]:
    seen: list[set[str]] = []
    for layer in model.peft_layers:
        bind = layer.bind

        def spy(weights, samples=None, _bind=bind):
            if weights:
                seen.append(set(weights))
            return _bind(weights, samples=samples)

        layer.bind = spy
    return seen


@pytest.mark.parametrize("flipout", [False, True])
def test_flipout_reaches_the_layers_only_inside_the_fit(flipout):
    model = _model()
    seen = _spy_binds(model)
    guide = MeanField(model, deterministic=("*.lora_B", "head.*"))
    fit(model, guide, _data(), num_data=8, max_steps=2, epochs=2, flipout=flipout, progress=False)
    with_locs = [keys for keys in seen if any(k.endswith(":loc") for k in keys)]
    assert len(seen) == 3 * len(model.peft_layers)  # the guide's setup trace, then two steps
    assert len(with_locs) == (2 * len(model.peft_layers) if flipout else 0)
    assert model.flipout_locs is None  # nothing left set on the model
    seen.clear()
    model.run(guide.median(), _data()[0][0])  # outside the fit: plain weights
    assert seen and not any(k.endswith(":loc") for keys in seen for k in keys)


def test_the_split_kl_step_runs_the_backbone_once_per_step():
    model = _model()
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    guide = MeanField(model, deterministic=("*.lora_B", "head.*"))
    result = fit(model, guide, _data(), num_data=8, max_steps=3, epochs=3, kl_step=KLStep(0.01), progress=False)
    assert result.steps == 3 and len(calls) == 1 + 3  # the guide's setup trace, then one per step: the KL step
    # samples the prior model only
    assert all(k > 0 for k in result.kl)


def test_kl_weight_zero_is_maximum_likelihood_for_a_point_mass():
    """The loss at kl_weight 0 is the scaled NLL alone: with lr 0 it equals the recorded NLL."""
    model = _model()
    result = fit(model, Delta(model), _data(), num_data=32, max_steps=1, lr=0.0, kl_weight=0.0, progress=False)
    assert result.history[0] == pytest.approx(result.nll[0], rel=1e-6) and result.kl[0] != result.kl[0]
