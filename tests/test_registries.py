"""Registries: a PEFT kind, a guide and a task kind added from outside the package run through the normal
fit path; the architecture table replaces name sniffing; Pyro settings stay scoped to the library."""

from __future__ import annotations

import dataclasses

import pyro
import pytest
import torch
from torch import nn

from helpers import tiny_bert, tiny_llama, token_batch
from pyro_bhpeft import ConfigError, LoraConfig, PeftConfig, fit, predict, priors
from pyro_bhpeft.guides import GUIDES, Delta, GuideKind, MeanField
from pyro_bhpeft.models import TASK_KINDS, SequenceClassifier
from pyro_bhpeft.layers import ARCHITECTURES, PeftLayer, Site, architecture, register_peft_kind, unregister_peft_kind
from pyro_bhpeft.layers.base import zeros_init
from pyro_bhpeft.registry import Registry


# ---- the registry type -------------------------------------------------------------------------------
def test_registry_lists_the_choices_and_refuses_duplicates():
    reg = Registry("colour")
    reg.register("red", 1)

    @reg.register("green")
    def green():
        return 2

    assert reg.names() == ["red", "green"] and reg["green"] is green
    with pytest.raises(ConfigError, match="unknown colour 'blue'; choose one of red, green"):
        reg["blue"]
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("red", 3)
    reg.register("red", 3, replace=True)
    assert reg["red"] == 3
    with pytest.raises(ConfigError, match="'x', 'y'"):
        reg.check(["red", "x", "y"])


# ---- a PEFT kind from outside: an IA3-style learned per-feature scaling of the FFN output -------------
@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    layers: tuple[int, ...] | None = None


class ScaleLayer(PeftLayer):
    kind = "scale"

    def __init__(self, base: nn.Linear, path: str, block: int) -> None:
        super().__init__(path, block)
        self.base = base

    def site_specs(self):
        return {"gain": Site((self.base.out_features,), zeros_init)}

    def forward(self, x):
        y = self.base(x)
        return y if self._weights is None else y * (1 + self._weights["gain"])


def add_scale(target, cfg: ScaleConfig):
    added = []
    for i in target.chosen(cfg.layers, "scale"):
        path = f"{target.path}.{i}.{target.arch.ffn_output}"
        layer = ScaleLayer(target.model.get_submodule(path), path, i)
        target.replace(path, layer)
        added.append(layer)
    return added


@pytest.fixture
def scale_kind():
    register_peft_kind("scale", ScaleConfig, add_scale)
    yield
    unregister_peft_kind("scale")


def _data(n=8):
    batch = token_batch(n)
    labels = torch.arange(n) % 2
    return [({k: v[i:i + 4] for k, v in batch.items()}, labels[i:i + 4]) for i in range(0, n, 4)]


def test_a_peft_kind_registered_from_outside_fits_and_predicts(scale_kind):
    config = PeftConfig(lora=LoraConfig(r=2), scale=ScaleConfig(layers=(1,)))
    assert config.kinds == ("lora", "scale") and PeftConfig.from_dict(config.to_dict()) == config
    model = SequenceClassifier(tiny_bert(), config, priors.Normal(1.0), num_labels=2)
    assert "encoder.layer.1.output.dense.gain" in model.sites
    assert "encoder.layer.0.output.dense.gain" not in model.sites
    result = fit(model, MeanField(model), _data(), num_data=8, epochs=3, lr=0.05, progress=False)
    gain = result.posterior.mean()["encoder.layer.1.output.dense.gain"]
    assert gain.abs().max() > 0  # trained from zero
    assert predict(result.posterior, _data(), num_samples=2).probs.shape == (8, 2)


def test_an_unknown_peft_kind_names_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown PEFT kind 'nope'; choose one of lora, adapter, prefix"):
        PeftConfig(nope=ScaleConfig())


# ---- a guide and a task kind from outside -------------------------------------------------------------
class ShrunkDelta(Delta):
    """A point mass (a user's guide under a new name)."""


def test_a_guide_registered_from_outside_trains_through_the_recipe():
    from pyro_bhpeft.recipe import Recipe, build_guide

    GUIDES.register("shrunk", GuideKind(ShrunkDelta, lambda model, r: ShrunkDelta(model), point_mass=True,
                                        uses_prior=False))
    try:
        recipe = Recipe(guide="shrunk", peft=PeftConfig(lora=LoraConfig(r=2)))
        model = SequenceClassifier(tiny_bert(), recipe.peft, recipe.make_prior(), num_labels=2)
        guide = build_guide(recipe, model)
        assert type(guide) is ShrunkDelta
        result = fit(model, guide, _data(), num_data=8, epochs=2, lr=0.05, kl_weight=0.0, progress=False)
        assert result.nll[-1] > 0 and all(k != k for k in result.kl)  # KL not computed at weight 0 (nan)
    finally:
        GUIDES.unregister("shrunk")
    with pytest.raises(ConfigError, match="unknown guide 'shrunk'; choose one of mean-field, low-rank, map, mle"):
        Recipe(guide="shrunk")


def test_task_kinds_map_to_their_models():
    assert TASK_KINDS["classification"] is SequenceClassifier
    with pytest.raises(ConfigError, match="unknown task kind 'ranking'"):
        TASK_KINDS["ranking"]


# ---- architecture facts ---------------------------------------------------------------------------------
def test_the_hybrid_takes_each_family_s_own_lora_targets():
    bert = SequenceClassifier(tiny_bert(), PeftConfig.hybrid(r=2), num_labels=2)
    llama = SequenceClassifier(tiny_llama(), PeftConfig.hybrid(r=2), num_labels=2)
    assert "encoder.layer.0.attention.self.query.lora_A" in bert.sites
    assert "layers.0.self_attn.q_proj.lora_A" in llama.sites and "layers.0.self_attn.v_proj.lora_B" in llama.sites
    assert "layers.1.mlp.down_proj.adapter_down" in llama.sites and "layers.1.self_attn.prefix" in llama.sites
    assert (bert.pooling, llama.pooling) == ("mean", "last")


def test_an_unknown_model_type_is_one_line_naming_the_fix():
    model = tiny_bert()
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="no architecture facts for model type 'mystery'.*ARCHITECTURES.register"):
        architecture(model)
    ARCHITECTURES.register("mystery", ARCHITECTURES["bert"])
    try:
        assert "encoder.layer.0.attention.self.value.lora_B" in SequenceClassifier(model, num_labels=2).sites
    finally:
        ARCHITECTURES.unregister("mystery")


# ---- Pyro settings are the library's own business -------------------------------------------------------------
def test_importing_and_using_the_library_leaves_pyro_settings_alone():
    assert pyro.settings.get("module_local_params") is False
    model = SequenceClassifier(tiny_bert(), PeftConfig(lora=LoraConfig(r=2)), num_labels=2)
    first, second = MeanField(model), MeanField(model)
    fit(model, first, _data(), num_data=8, epochs=1, lr=0.05, progress=False)
    assert pyro.settings.get("module_local_params") is False
    assert len(pyro.get_param_store()) == 0  # nothing went to the global store
    with torch.no_grad(), pyro.poutine.block():
        second(*_data()[0])
    name = "encoder.layer.0.attention.self.query.lora_A"
    assert second.scale(name).eq(0.01).all()  # untouched by the other guide's fit
    assert not first.scale(name).eq(0.01).all()
