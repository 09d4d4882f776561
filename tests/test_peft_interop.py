"""LoRA adapters in and out in the peft library's format: exported posterior means load in ``peft.PeftModel``
with equal outputs; a peft-trained adapter comes in as a point estimate with equal predictions, and TFB
turns it into a posterior."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModel, AutoModelForCausalLM

from helpers import quiz, save_tiny_backbone, save_tiny_causal_lm
from pyro_bhpeft import BayesianPEFT, ConfigError, LoraConfig, PeftConfig
from pyro_bhpeft.models.base import pool
from pyro_bhpeft.peft_io import export_peft_adapter, read_peft_adapter

TEXTS = ["good film", "bad film", "great movie", "awful movie"] * 6
LABELS = ["pos", "neg", "pos", "neg"] * 6


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


def _fitted_bert(bert_dir, **kw):
    model = BayesianPEFT(bert_dir, r=2, lora_alpha=4, target_modules=["query", "value"], max_length=16,
                         batch_size=8, init_scale=0.05, **kw)
    return model.fit((TEXTS, LABELS), epochs=2, progress=False)


def _last_token(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, d) -> (batch, d) at each row's last visible token, as our ``last`` pooling reads it."""
    return pool(values, mask, "last")


def test_exported_bert_posterior_mean_loads_in_peft_with_equal_outputs(bert_dir, tmp_path):
    model = _fitted_bert(bert_dir)
    folder = export_peft_adapter(model, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4
    theirs = PeftModel.from_pretrained(AutoModel.from_pretrained(bert_dir), str(folder)).eval()
    inputs = model.loader(["good movie", "awful film", "the plot was not good"])[0]
    mean = model.posterior.mean()
    assert mean["encoder.layer.0.attention.self.query.lora_B"].abs().max() > 0  # the fit moved B off zero
    with torch.no_grad():
        hidden = theirs(**inputs).last_hidden_state
        with model.model.bound(mean):
            ours = model.model.backbone(**inputs).last_hidden_state
        torch.testing.assert_close(hidden, ours, rtol=0, atol=1e-6)
        from safetensors.torch import load_file

        head = load_file(str(folder / "bhpeft_head.safetensors"))
        facts = json.loads((folder / "bhpeft_head.json").read_text())
        logits = pool(hidden, inputs["attention_mask"], facts["pooling"]) @ head["head.weight"].T + head["head.bias"]
    torch.testing.assert_close(logits.softmax(-1), model.predict(["good movie", "awful film", "the plot was not good"],
                                                                  samples=0).probs, rtol=0, atol=1e-6)


def test_exported_llama_posterior_mean_gives_peft_equal_lm_logits(lm_dir, tmp_path):
    data = quiz()
    model = BayesianPEFT(lm_dir, task=data, r=2, lora_alpha=4, max_length=40, batch_size=2, init_scale=0.05)
    model.fit(data, epochs=3, progress=False)
    folder = export_peft_adapter(model, tmp_path / "adapter")
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm_dir), str(folder)).eval()
    inputs = next(iter(model.loader(data)))[0]
    with torch.no_grad():
        logits = theirs(**inputs).logits
        with model.model.bound(model.posterior.mean()):
            ours = model.model.backbone.lm_head(model.model.backbone(**inputs).last_hidden_state)
    torch.testing.assert_close(logits, ours, rtol=0, atol=1e-5)


def test_export_refuses_parts_peft_cannot_hold(bert_dir, tmp_path):
    model = BayesianPEFT(bert_dir, peft=PeftConfig.hybrid(r=2, bottleneck=2, prefix_length=2), max_length=16)
    model.fit((TEXTS[:8], LABELS[:8]), epochs=1, progress=False)
    with pytest.raises(ConfigError, match="only LoRA posteriors export"):
        export_peft_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def _peft_trained_adapter(lm_dir, folder):
    """A LoRA adapter trained with the peft library itself (a few AdamW steps of next-token loss on the quiz)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(lm_dir)
    peft_model = get_peft_model(base, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                     lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    ids = torch.randint(3, 50, (4, 12))
    for _ in range(5):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.save_pretrained(folder)
    return peft_model.eval()


def test_peft_trained_adapter_imports_as_an_equal_point_estimate_and_tfb_bayesianizes_it(lm_dir, tmp_path):
    peft_model = _peft_trained_adapter(lm_dir, tmp_path / "adapter")
    data = quiz()
    point = BayesianPEFT.from_peft(tmp_path / "adapter", task=data, backbone=lm_dir, guide="mle", max_length=40)
    assert point.recipe.peft.lora.r == 2 and point.recipe.peft.lora.lora_alpha == 4
    posterior = point.tfb(data, split="train")
    inputs = next(iter(posterior.loader(data)))[0]
    answer_ids = list(posterior.model.answer_ids)
    with torch.no_grad():
        theirs = _last_token(peft_model(**inputs).logits, inputs["attention_mask"])[:, answer_ids].softmax(-1)
    # the TFB posterior's mean is the adapter itself (the SVD rotation keeps every product B A)
    torch.testing.assert_close(posterior.predict(data, samples=0).probs, theirs, rtol=0, atol=1e-5)
    sigma = posterior.posterior.meta["tfb"]["sigma"]
    assert 1e-3 <= sigma <= 0.2
    draws = posterior.predict(data, samples=8)
    assert torch.allclose(draws.probs.sum(-1), torch.ones(len(draws.probs)))
    assert float(draws.mutual_information.mean()) > 0  # the draws differ: it is a posterior now


def test_our_export_imports_back_to_the_same_predictions(bert_dir, tmp_path):
    model = _fitted_bert(bert_dir)
    export_peft_adapter(model, tmp_path / "adapter")
    back = BayesianPEFT.from_peft(tmp_path / "adapter", task=model.spec, backbone=bert_dir, guide="mle",
                                  max_length=16)
    assert back.recipe.peft.lora == LoraConfig(r=2, lora_alpha=4, target_modules=("attention.self.query",
                                               "attention.self.value"), layers=(0, 1))
    tfb = back.tfb((TEXTS, LABELS))
    torch.testing.assert_close(tfb.predict(["good movie", "awful film"], samples=0).probs,
                               model.predict(["good movie", "awful film"], samples=0).probs, rtol=0, atol=1e-5)


def test_centred_prior_is_the_adapter(bert_dir, tmp_path):
    model = _fitted_bert(bert_dir)
    export_peft_adapter(model, tmp_path / "adapter")
    back = BayesianPEFT.from_peft(tmp_path / "adapter", backbone=bert_dir, center_prior=True, prior_scale=0.1)
    name = "encoder.layer.1.attention.self.value.lora_B"
    torch.testing.assert_close(back.prior.locs[name], model.posterior.mean()[name])
    assert float(back.prior.scales[name].max()) == pytest.approx(0.1)


def test_reading_a_folder_that_is_not_a_lora_adapter_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not a peft adapter folder"):
        read_peft_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ConfigError, match="only LoRA adapters"):
        read_peft_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "use_dora": True}))
    with pytest.raises(ConfigError, match="use_dora"):
        read_peft_adapter(tmp_path)
