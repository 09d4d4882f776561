"""The core contract: every PEFT kind x guide x model kind on tiny BERT and Llama, site names,
frozen weights, exact identity when nothing is bound, prefix masking, save/load, bad configs."""

from __future__ import annotations

import pyro
import pytest
import torch
from transformers import MPNetConfig, MPNetModel

from conftest import VOCAB, tiny_bert, tiny_llama
from pyro_bhpeft import AdapterConfig, ConfigError, LoraConfig, PeftConfig, Posterior, PrefixConfig, fit, predict, priors
from pyro_bhpeft.guides import Delta, LowRank, MeanField
from pyro_bhpeft.models import MultipleChoice, Regressor, SequenceClassifier

TARGETS = {"bert": ("query", "value"), "llama": ("q_proj", "v_proj")}
KINDS = {
    "lora": lambda t: PeftConfig(LoraConfig(r=2, targets=t)),
    "adapter": lambda t: PeftConfig(None, AdapterConfig(bottleneck=4)),
    "prefix": lambda t: PeftConfig(None, None, PrefixConfig(length=3)),
    "hybrid": lambda t: PeftConfig(LoraConfig(r=2, targets=t), AdapterConfig(bottleneck=4), PrefixConfig(length=3)),
}
GUIDES = {"mean-field": MeanField, "low-rank": lambda m: LowRank(m, rank=2), "delta": Delta}
MODELS = {"classifier": lambda b, p: SequenceClassifier(b, p, num_labels=3), "choice": MultipleChoice,
          "regressor": Regressor}


def batch_for(model_kind: str, n: int = 6, seq: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 3, seq) if model_kind == "choice" else (n, seq)
    ids = torch.randint(5, VOCAB, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[..., seq - 2:] = 0  # padding at the end of every sequence
    labels = torch.randn(n, generator=g) if model_kind == "regressor" else torch.randint(0, 3, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask}, labels


def build(backbone: str, kind: str, model_kind: str):
    make = tiny_bert if backbone == "bert" else tiny_llama
    return MODELS[model_kind](make(), KINDS[kind](TARGETS[backbone]))


CASES = [("bert", k, g, m) for k in KINDS for g in GUIDES for m in MODELS]
CASES += [("llama", k, "mean-field", m) for k in KINDS for m in ("classifier", "choice")]


@pytest.mark.parametrize("backbone, kind, guide, model_kind", CASES)
def test_contract_traces_fits_and_predicts(backbone, kind, guide, model_kind):
    model = build(backbone, kind, model_kind)
    data = [batch_for(model_kind)]
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    g = GUIDES[guide](model)
    result = fit(model, g, data, num_data=12, max_steps=3, epochs=3, lr=1e-2, progress=False)
    assert len(result.history) == 3 and all(torch.isfinite(torch.tensor(result.history)))
    assert all(torch.equal(v, frozen[k]) for k, v in model.backbone.state_dict().items())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not set(pyro.get_param_store().keys())  # guide parameters are module-local
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert not any(id(p) in backbone_ids for p in g.parameters())
    for k in (3, 0):
        pred = predict(result.posterior, data, num_samples=k)
        if model_kind == "regressor":
            assert pred.mean.shape == (6,) and (pred.variance > 0).all()
            assert torch.allclose(pred.variance, pred.aleatoric + pred.epistemic)
        else:
            assert torch.allclose(pred.probs.sum(-1), torch.ones(6), atol=1e-5)
            assert (pred.mutual_information >= 0).all()
            assert torch.allclose(pred.predictive_entropy, pred.expected_entropy + pred.mutual_information, atol=1e-5)
            if k == 0 or guide == "delta":
                assert torch.allclose(pred.mutual_information, torch.zeros(6), atol=1e-6)


def test_site_names_and_shapes_are_exactly_as_documented():
    model = SequenceClassifier(tiny_bert(), KINDS["hybrid"](("query", "value")), num_labels=3)
    trace = pyro.poutine.trace(model).get_trace(*batch_for("classifier"))
    sites = {n: tuple(s["value"].shape) for n, s in trace.nodes.items() if s["type"] == "sample"}
    expected = {"head.weight": (3, 32), "head.bias": (3,), "obs": (6,), "data": (6,)}  # data: the plate indices
    for i in range(2):
        for t in ("query", "value"):
            expected[f"encoder.layer.{i}.attention.self.{t}.lora_A"] = (2, 32)
            expected[f"encoder.layer.{i}.attention.self.{t}.lora_B"] = (32, 2)
        expected.update({f"encoder.layer.{i}.output.dense.adapter_down": (4, 32),
                         f"encoder.layer.{i}.output.dense.adapter_down_bias": (4,),
                         f"encoder.layer.{i}.output.dense.adapter_up": (32, 4),
                         f"encoder.layer.{i}.output.dense.adapter_up_bias": (32,),
                         f"encoder.layer.{i}.attention.self.prefix": (2, 4, 3, 8)})
    assert sites == expected
    assert trace.nodes["obs"]["is_observed"]
    llama = MultipleChoice(tiny_llama(), KINDS["hybrid"](("q_proj", "v_proj")))
    names = set(llama.sites)
    assert "layers.1.self_attn.q_proj.lora_A" in names and "layers.0.mlp.down_proj.adapter_up" in names
    assert llama.sites["layers.0.self_attn.prefix"].shape == (2, 2, 3, 8)  # 2 key/value heads of dim 8


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama])
def test_nothing_bound_or_zero_init_leaves_the_backbone_exact(make):
    ids, mask = batch_for("classifier")[0].values()
    plain = make()(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = ("query", "value") if make is tiny_bert else ("q_proj", "v_proj")
    model = SequenceClassifier(make(), KINDS["hybrid"](targets))
    assert torch.equal(model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, plain)
    init = model.initial_values()  # LoRA B = 0 and adapter up = 0: exact too, prefix aside
    init = {k: v for k, v in init.items() if not k.endswith("prefix")}
    with model.bound(init):
        out = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(out, plain, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama])
def test_prefix_keeps_padding_and_causality(make):
    model = SequenceClassifier(make(), PeftConfig(None, None, PrefixConfig(length=3)))
    weights = {n: torch.randn(s.shape) for n, s in model.sites.items()}
    (batch, _) = batch_for("classifier")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with model.bound(weights):
        out = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        changed = ids.clone()
        changed[:, -2:] = 7  # only padded positions change
        out2 = model.backbone(input_ids=changed, attention_mask=mask).last_hidden_state
        assert torch.allclose(out[:, :-2], out2[:, :-2], atol=1e-5)
        if make is tiny_llama:  # position t never sees tokens after t
            later = ids.clone()
            later[:, 3:] = 9
            out3 = model.backbone(input_ids=later, attention_mask=torch.ones_like(ids)).last_hidden_state
            out4 = model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            assert torch.allclose(out3[:, :3], out4[:, :3], atol=1e-5)
    assert not torch.allclose(out, model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state)


@pytest.mark.parametrize("guide", list(GUIDES))
def test_save_load_round_trip_gives_identical_predictions(guide, tmp_path):
    model = build("bert", "hybrid", "classifier")
    data = [batch_for("classifier")]
    result = fit(model, GUIDES[guide](model), data, num_data=6, max_steps=3, epochs=3, lr=1e-2, progress=False)
    result.posterior.save(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "guide.safetensors"]
    again = Posterior.load(tmp_path / "run", backbone=tiny_bert())
    a, b = predict(result.posterior, data, num_samples=4, seed=3), predict(again, data, num_samples=4, seed=3)
    assert torch.equal(a.probs, b.probs)
    with pytest.raises(FileExistsError, match="already exists"):
        result.posterior.save(tmp_path / "run")


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    import pyro_bhpeft.posterior as post

    model = build("bert", "lora", "classifier")
    result = fit(model, MeanField(model), [batch_for("classifier")], num_data=6, max_steps=1, progress=False)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(post, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        result.posterior.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_result_other_seed_differs():
    def once(seed):
        model = build("bert", "hybrid", "classifier")
        r = fit(model, MeanField(model), [batch_for("classifier")], num_data=6, max_steps=3, epochs=3, seed=seed,
                progress=False)
        return r.history, predict(r.posterior, [batch_for("classifier")], num_samples=2, seed=seed).probs

    (h0, p0), (h0b, p0b), (h1, p1) = once(0), once(0), once(1)
    assert h0 == h0b and torch.equal(p0, p0b)
    assert h0 != h1 and not torch.equal(p0, p1)


def test_kl_weight_zero_is_maximum_likelihood():
    model = build("bert", "lora", "classifier")
    data = [batch_for("classifier")]
    r = fit(model, Delta(model), data, num_data=6, max_steps=2, epochs=2, kl_weight=0.0, progress=False)
    w = r.posterior.mean()
    logits = model.run(w, data[0][0])
    nll = torch.nn.functional.cross_entropy(logits, data[0][1], reduction="mean")
    loss = fit(model, r.posterior.guide, data, num_data=6, max_steps=1, lr=1e-12, kl_weight=0.0,
               progress=False).history[0]
    assert loss == pytest.approx(float(nll), rel=1e-4)  # no prior term in the loss


@pytest.mark.parametrize("make_bad, needle", [
    (lambda: SequenceClassifier(tiny_bert(), PeftConfig(LoraConfig(targets=("nope",)))), "query"),
    (lambda: LoraConfig(r=0), "rank r"),
    (lambda: AdapterConfig(bottleneck=0), "bottleneck"),
    (lambda: SequenceClassifier(tiny_bert(), PeftConfig(LoraConfig(layers=(5,)))), "0..1"),
    (lambda: SequenceClassifier(tiny_bert(), pooling="max"), "pooling"),
    (lambda: SequenceClassifier(tiny_bert(), num_labels=1), "num_labels"),
    (lambda: LowRank(SequenceClassifier(tiny_bert()), rank=0), "rank"),
    (lambda: SequenceClassifier(MPNetModel(MPNetConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=4, intermediate_size=64)),
                                PeftConfig(None, None, PrefixConfig())), "AttentionInterface"),
])
def test_bad_configs_raise_clear_errors(make_bad, needle):
    with pytest.raises((ConfigError, ValueError), match=needle):
        make_bad()


def test_injecting_twice_is_refused():
    bert = tiny_bert()
    SequenceClassifier(bert)
    with pytest.raises(ConfigError, match="already carries PEFT layers"):
        SequenceClassifier(bert)


def test_priors_log_prob_overrides_and_round_trip():
    x = torch.randn(3, 4)
    cases = [(priors.Normal(0.5), torch.distributions.Normal(0.0, 0.5)),
             (priors.Laplace(0.3), torch.distributions.Laplace(0.0, 0.3)),
             (priors.StudentT(3.0, 2.0), torch.distributions.StudentT(3.0, 0.0, 2.0))]
    for ours, ref in cases:
        assert torch.allclose(ours.distribution("s", (3, 4)).log_prob(x), ref.log_prob(x).sum())
        assert priors.prior_from_dict(ours.to_dict()) == ours
    per = priors.PerSite(priors.Normal(1.0), {"*.prefix": priors.Laplace(0.1), "*": priors.Normal(2.0)})
    assert per.resolve("layer.0.prefix") == priors.Laplace(0.1) and per.resolve("head.weight") == priors.Normal(2.0)
    assert priors.prior_from_dict(per.to_dict()) == per
    with pytest.raises(ValueError, match="positive"):
        priors.Normal(0.0)


@pytest.mark.slow
def test_packaged_minilm_hybrid_fits_predicts_and_reloads_by_name(tmp_path):
    from pyro_bhpeft import load_backbone

    model, tokenizer, name = load_backbone("minilm")
    assert type(model).__name__ == "BertModel" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    texts = ["a gripping, beautifully acted film", "dull and far too long", "I loved every minute", "a mess"]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    data = [({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor([1, 0, 1, 0]))]
    clf = SequenceClassifier(model, PeftConfig.hybrid(r=4), num_labels=2)
    result = fit(clf, MeanField(clf), data, num_data=4, max_steps=2, epochs=2, backbone_name=name, progress=False)
    result.posterior.save(tmp_path / "run")
    again = Posterior.load(tmp_path / "run")  # the backbone is reloaded by its recorded name
    a, b = predict(result.posterior, data, num_samples=3, seed=1), predict(again, data, num_samples=3, seed=1)
    assert torch.equal(a.probs, b.probs)
