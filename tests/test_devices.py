"""Devices and precision: a bfloat16 backbone with float32 PEFT weights, KL and likelihood."""

from __future__ import annotations

import pytest
import torch
from helpers import quiz, save_tiny_causal_lm

from pyro_bhpeft.backbone import BackboneError, load_backbone, resolve_device
from pyro_bhpeft.data import make_loader, tokenize
from pyro_bhpeft.data.prompts import for_backbone
from pyro_bhpeft.posterior import Posterior
from pyro_bhpeft.predict import predict
from pyro_bhpeft.recipe import Recipe, train


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


def test_a_bfloat16_backbone_trains_float32_weights_and_predicts_like_float32(lm_dir, tmp_path):
    recipe = Recipe(backbone=lm_dir, guide="mean-field", dtype="bfloat16", max_steps=4, batch_size=2,
                    max_length=40, lr=1e-2)
    result = train(recipe, quiz(), progress=False)
    assert next(result.posterior.model.backbone.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in result.posterior.guide.parameters())
    assert all(torch.isfinite(torch.tensor(result.history)))
    result.posterior.save(tmp_path / "run")
    loaded = Posterior.load(tmp_path / "run")
    assert next(loaded.model.backbone.parameters()).dtype == torch.bfloat16  # the run records its precision
    full = Posterior.load(tmp_path / "run", backbone=load_backbone(lm_dir).model)  # the same guide in float32
    tokenizer = load_backbone(lm_dir).tokenizer
    loader = make_loader(tokenize(for_backbone(quiz(), full.model.backbone, tokenizer), tokenizer, 40)["test"], 4)
    low, high = predict(loaded, loader, num_samples=0), predict(full, loader, num_samples=0)
    assert torch.as_tensor(low.probs).dtype == torch.float32
    torch.testing.assert_close(torch.as_tensor(low.probs), torch.as_tensor(high.probs), atol=0.03, rtol=0)


def test_devices_resolve_or_fail_in_one_line():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(BackboneError, match="no CUDA device; use --device cpu or auto"):
            resolve_device("cuda")


def test_a_run_loads_onto_the_named_device(lm_dir, tmp_path):
    result = train(Recipe(backbone=lm_dir, guide="mle", max_steps=1, batch_size=2, max_length=40), quiz(),
                   progress=False, device="cpu")
    result.posterior.save(tmp_path / "run")
    loaded = Posterior.load(tmp_path / "run", device="cpu")
    assert next(loaded.model.backbone.parameters()).device.type == "cpu"
    assert "dtype" not in loaded.config()  # float32 runs keep the old config
