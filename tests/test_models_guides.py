"""The contract every (PEFT kind x guide x model kind) combination keeps, on tiny BERT and Llama: it traces
with exactly its sites, fits without touching the frozen backbone, and predicts well-formed uncertainties.
Also: the KL weight (0 is maximum likelihood; linear annealing), reproducibility, heads and pooling."""

from __future__ import annotations

import math
import re

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample
from torch.nn import functional as F

from pyro_bhpeft import (AdapterConfig, ClassPrediction, LoraConfig, PeftConfig, PrefixConfig,
                         RegressionPrediction, fit, predict, priors)
from pyro_bhpeft.guides import Delta, LowRank, MeanField
from pyro_bhpeft.infer import kl_schedule
from pyro_bhpeft.models import MultipleChoice, Regressor, SequenceClassifier
from pyro_bhpeft.models.base import pool
from pyro_bhpeft.models.effects import DataSize, KLWeight
from pyro_bhpeft.layers.delta import DeltaConfig

N, SEQ, CHOICES, LABELS = 6, 7, 3, 3
TARGETS = {"bert": ("query", "value"), "llama": ("q_proj", "v_proj")}
KINDS = {
    "lora": lambda t: PeftConfig(LoraConfig(r=2, target_modules=t)),
    "adapter": lambda t: PeftConfig(None, AdapterConfig(bottleneck=4)),
    "prefix": lambda t: PeftConfig(None, None, PrefixConfig(length=3)),
    "hybrid": lambda t: PeftConfig(LoraConfig(r=2, target_modules=t), AdapterConfig(bottleneck=4), PrefixConfig(length=3)),
    "delta": lambda t: PeftConfig(lora=None, delta=DeltaConfig(target_modules=t)),  # ABMLL's full-matrix task weights
}
GUIDES = {"meanfield": MeanField, "lowrank": lambda m: LowRank(m, rank=2), "delta": Delta}
MODELS = {
    "classifier": lambda b, p: SequenceClassifier(b, p, num_labels=LABELS),
    "choice": lambda b, p: MultipleChoice(b, p),
    "regressor": lambda b, p: Regressor(b, p),
}

# The PEFT site names, per block i, written out; the head adds head.weight and head.bias.
SITE_TEMPLATES = {
    ("bert", "lora"): ["encoder.layer.{i}.attention.self.query.lora_A",
                       "encoder.layer.{i}.attention.self.query.lora_B",
                       "encoder.layer.{i}.attention.self.value.lora_A",
                       "encoder.layer.{i}.attention.self.value.lora_B"],
    ("bert", "adapter"): ["encoder.layer.{i}.output.dense.adapter_down",
                          "encoder.layer.{i}.output.dense.adapter_down_bias",
                          "encoder.layer.{i}.output.dense.adapter_up",
                          "encoder.layer.{i}.output.dense.adapter_up_bias"],
    ("bert", "prefix"): ["encoder.layer.{i}.attention.self.prefix"],
    ("llama", "lora"): ["layers.{i}.self_attn.q_proj.lora_A", "layers.{i}.self_attn.q_proj.lora_B",
                        "layers.{i}.self_attn.v_proj.lora_A", "layers.{i}.self_attn.v_proj.lora_B"],
    ("llama", "adapter"): ["layers.{i}.mlp.down_proj.adapter_down", "layers.{i}.mlp.down_proj.adapter_down_bias",
                           "layers.{i}.mlp.down_proj.adapter_up", "layers.{i}.mlp.down_proj.adapter_up_bias"],
    ("llama", "prefix"): ["layers.{i}.self_attn.prefix"],
    ("bert", "delta"): ["encoder.layer.{i}.attention.self.query.delta", "encoder.layer.{i}.attention.self.value.delta"],
    ("llama", "delta"): ["layers.{i}.self_attn.q_proj.delta", "layers.{i}.self_attn.v_proj.delta"],
}


def expected_sites(family: str, kind: str, model_kind: str) -> set[str]:
    parts = ("lora", "adapter", "prefix") if kind == "hybrid" else (kind,)
    names = {t.format(i=i) for p in parts for t in SITE_TEMPLATES[(family, p)] for i in (0, 1)}
    names |= {"head.weight", "head.bias"}
    return names | {"log_noise"} if model_kind == "regressor" else names


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)


def labelled(model_kind: str, make_tokens, seed: int = 0):
    batch = make_tokens(N, SEQ, choices=CHOICES if model_kind == "choice" else None, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    labels = torch.randn(N, generator=g) if model_kind == "regressor" else torch.randint(0, 3, (N,), generator=g)
    return batch, labels


def _plain_name(key: str) -> str:
    """A wrapped layer's frozen weight under the name it has in the plain model (drop the ``.base`` hops)."""
    return re.sub(r"(\.base)+\.", ".", key)


CASES = [(f, k, g, m) for f in ("bert", "llama") for k in KINDS for g in GUIDES for m in MODELS]


@pytest.mark.parametrize("family, kind, guide_name, model_kind", CASES)
def test_contract_trace_fit_predict(family, kind, guide_name, model_kind, make_backbone, make_tokens):
    plain = make_backbone(family).state_dict()
    model = MODELS[model_kind](make_backbone(family), KINDS[kind](TARGETS[family]))
    data = [labelled(model_kind, make_tokens)]

    # Traces with exactly its sites; the labels are observed.
    trace = poutine.trace(model).get_trace(*data[0])
    latent = {n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
              and not site_is_subsample(s)}
    assert latent == expected_sites(family, kind, model_kind)
    assert trace.nodes["obs"]["is_observed"] and torch.equal(trace.nodes["obs"]["value"], data[0][1])

    # Fits: only the guide's parameters move; the frozen backbone stays out of Pyro and bit-identical.
    guide = GUIDES[guide_name](model)
    with torch.no_grad(), poutine.block():
        guide(*data[0])
    before = {n: p.detach().clone() for n, p in guide.named_parameters()}
    result = fit(model, guide, data, num_data=2 * N, max_steps=3, epochs=5, lr=1e-2, progress=False)
    assert result.steps == 3 and len(result.history) == 3
    assert all(torch.isfinite(torch.tensor(result.history)))
    after = dict(guide.named_parameters())
    assert before.keys() == after.keys() and before
    assert all(not torch.equal(before[n], after[n]) for n in before), "a guide parameter did not move"
    frozen = {_plain_name(k): v for k, v in model.backbone.state_dict().items()}
    assert frozen.keys() == plain.keys() and all(torch.equal(frozen[k], plain[k]) for k in plain)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(n.startswith("backbone.") for n, _ in model.named_parameters())  # the model owns no weights
    assert len(pyro.get_param_store()) == 0
    backbone_tensors = {p.data_ptr() for p in model.backbone.parameters()}
    assert not any(p.data_ptr() in backbone_tensors for p in guide.parameters())

    # Predicts, with K draws and with the posterior mean.
    for k in (3, 0):
        pred = predict(result.posterior, data, num_samples=k, seed=1, keep_samples=True)
        point = k == 0 or guide_name == "delta"
        if model_kind == "regressor":
            assert isinstance(pred, RegressionPrediction)
            assert pred.mean.shape == pred.variance.shape == pred.epistemic.shape == (N,)
            assert torch.allclose(pred.variance, pred.aleatoric + pred.epistemic)
            assert (pred.aleatoric > 0).all() and (pred.epistemic >= 0).all()
            assert (pred.epistemic == 0).all() if point else (pred.epistemic > 0).all()
        else:
            assert isinstance(pred, ClassPrediction)
            assert pred.probs.shape == (N, CHOICES if model_kind == "choice" else LABELS)
            assert torch.allclose(pred.probs.sum(-1), torch.ones(N), atol=1e-6)
            assert (pred.mutual_information >= 0).all()
            assert torch.allclose(pred.predictive_entropy, pred.expected_entropy + pred.mutual_information,
                                  atol=1e-6)
            draws = pred.sample_probs  # (K, N, C): recompute the decomposition from the draws
            assert torch.allclose(pred.probs, draws.mean(0))
            assert torch.allclose(pred.predictive_entropy, entropy(draws.mean(0)), atol=1e-6)
            assert torch.allclose(pred.expected_entropy, entropy(draws).mean(0), atol=1e-6)
            if point:
                assert torch.equal(pred.mutual_information, torch.zeros(N))
            else:
                assert draws.shape[0] == 3 and not torch.equal(draws[0], draws[1])  # distinct draws
        assert torch.equal(pred.labels, data[0][1]) and pred.num_samples == k

    # The draws folded into one backbone forward give the predictions of one forward per draw.
    folded = predict(result.posterior, data, num_samples=3, seed=1, keep_samples=True)
    looped = predict(result.posterior, data, num_samples=3, seed=1, keep_samples=True, max_rows=1)
    if model_kind == "regressor":
        assert torch.allclose(folded.mean, looped.mean, atol=1e-5)
        assert torch.allclose(folded.epistemic, looped.epistemic, rtol=1e-3, atol=1e-7)
    else:
        assert torch.allclose(folded.sample_probs, looped.sample_probs, atol=1e-5)


def test_choice_mask_hides_a_choice(make_bert, make_tokens):
    model = MultipleChoice(make_bert(), KINDS["lora"](TARGETS["bert"]))
    batch = make_tokens(N, SEQ, choices=CHOICES)
    batch["choice_mask"] = torch.tensor([[True, True, False]] * N)
    result = fit(model, MeanField(model), [(batch, torch.zeros(N, dtype=torch.long))], num_data=N, max_steps=1,
                 progress=False)
    pred = predict(result.posterior, [batch], num_samples=2)
    assert torch.equal(pred.probs[:, 2], torch.zeros(N)) and (pred.probs[:, :2] > 0).all()
    assert torch.allclose(pred.probs.sum(-1), torch.ones(N))


def test_regressor_reports_in_original_units(make_bert, make_tokens):
    model = Regressor(make_bert(), KINDS["lora"](TARGETS["bert"]), target_loc=5.0, target_scale=2.0)
    weights = {n: torch.randn(s.shape) for n, s in model.sites.items()} | {"log_noise": torch.tensor(-1.0)}
    batch = make_tokens()
    mean, noise = model.run(weights, batch)
    standard = Regressor(make_bert(), KINDS["lora"](TARGETS["bert"]))
    z, unit_noise = standard.run(weights, batch)
    assert torch.allclose(mean, 2.0 * z + 5.0, atol=1e-5)
    assert torch.allclose(noise, 2.0 * unit_noise) and torch.allclose(unit_noise, torch.tensor(-1.0).exp())


def test_pooling_known_answers():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # values 0..3 and 4..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(hidden, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [1.0, 4.5]
    assert pool(hidden, right, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, None, "mean").flatten().tolist() == [1.5, 5.5]


def test_auto_pooling_is_mean_for_encoders_and_last_token_for_decoders(make_bert, make_llama):
    assert SequenceClassifier(make_bert()).pooling == "mean"
    assert SequenceClassifier(make_llama(), KINDS["lora"](TARGETS["llama"])).pooling == "last"
    assert SequenceClassifier(make_bert(), pooling="cls").pooling == "cls"


def test_guides_start_where_the_model_says_with_small_scales(make_bert, make_tokens):
    model = SequenceClassifier(make_bert(), KINDS["hybrid"](TARGETS["bert"]), num_labels=LABELS)
    data = labelled("classifier", make_tokens)
    guide = MeanField(model, init_scale=0.03, deterministic=("*.lora_B",))
    with torch.no_grad(), poutine.block():
        guide(*data)
    marginals = guide.marginals()
    assert set(marginals) == set(model.sites)
    for name, (loc, scale) in marginals.items():
        assert loc.shape == model.sites[name].shape
        if name.endswith(("lora_B", "adapter_up", "adapter_up_bias", "head.bias")):
            assert not loc.any()
        if name.endswith("lora_B"):
            assert scale is None  # a point mass, as asked
        else:
            assert torch.allclose(scale, torch.full_like(scale, 0.03))
    low = LowRank(model, rank=2, init_scale=0.03)
    with torch.no_grad(), poutine.block():
        low(*data)
    loc, factor, diag = low.low_rank()
    dim = sum(torch.Size(s.shape).numel() for s in model.sites.values())
    assert loc.shape == (dim,) and factor.shape == (dim, 2) and diag.shape == (dim,)
    assert {n: sl.stop - sl.start for n, (sl, _) in low.site_slices().items()} == {
        n: torch.Size(s.shape).numel() for n, s in model.sites.items()}


def _delta_loss(model, guide, data, kl_weight: float, num_data: int) -> float:
    """The loss fit reports at the guide's current point (history[0] comes before the step; lr 0 keeps it there)."""
    return fit(model, guide, data, num_data=num_data, max_steps=1, lr=0.0, kl_weight=kl_weight,
               progress=False).history[0]


def test_loss_is_the_scaled_likelihood_plus_kl_weight_times_the_prior_term(make_bert, make_tokens):
    prior = priors.Normal(0.7)
    model = SequenceClassifier(make_bert(), KINDS["hybrid"](TARGETS["bert"]), prior, num_labels=LABELS)
    data = [labelled("classifier", make_tokens)]
    guide = Delta(model)
    fit(model, guide, data, num_data=N, max_steps=3, lr=1e-2, kl_weight=0.0, progress=False)  # move off the init
    w = {n: v.detach().clone() for n, v in guide.median().items()}
    with torch.no_grad():
        nll = F.cross_entropy(model.run(w, data[0][0]), data[0][1], reduction="sum")
        log_prior = sum(torch.distributions.Normal(0.0, 0.7).log_prob(v).sum() for v in w.values())
    # A batch of N out of num_data examples; for a point mass the loss per example is
    # (-(num_data / N) log p(y_batch | w) - beta log p(w)) / num_data: beta = 0 is the likelihood alone.
    for num_data in (N, 4 * N):
        for beta in (0.0, 0.5, 1.0):
            expected = float((num_data / N * nll - beta * log_prior) / num_data)
            assert _delta_loss(model, guide, data, beta, num_data) == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(v, w[n]) for n, v in guide.median().items())  # evaluated at the same point throughout
    assert not {"kl_weight", "num_data", "prior_only"} & set(vars(model))  # fit steers by effects, sets nothing


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_model_weights_its_prior_sites_by_kl_weight(beta, make_bert, make_tokens):
    """log p(y, w) of a traced model = (num_data / batch) log p(y | w) + beta log p(w), for any guide's ELBO."""
    model = Regressor(make_bert(), KINDS["lora"](TARGETS["bert"]), priors.Laplace(0.4))
    batch, labels = labelled("regressor", make_tokens)
    with KLWeight(beta), DataSize(3 * N):
        trace = poutine.trace(model).get_trace(batch, labels)
    trace.compute_log_prob()
    w = {n: trace.nodes[n]["value"] for n in model.latent_names()}
    with torch.no_grad():
        mean, noise = model.run(w, batch)
        log_lik = torch.distributions.Normal(mean, noise).log_prob(labels).sum()
        log_prior = sum(torch.distributions.Laplace(0.0, 0.4).log_prob(w[n]).sum() for n in model.sites)
        log_prior += torch.distributions.Normal(math.log(0.5), 1.0).log_prob(w["log_noise"])  # noise_prior_scale
    assert float(trace.log_prob_sum()) == pytest.approx(float(3 * log_lik + beta * log_prior), rel=1e-5)


def test_kl_weight_zero_fits_the_maximum_likelihood_point(make_bert, make_tokens):
    """With kl_weight=0 and a prior that would pull hard, the fit still drives the training NLL to ~0."""
    model = SequenceClassifier(make_bert(), KINDS["lora"](TARGETS["bert"]), priors.Normal(1e-3), num_labels=LABELS)
    data = [labelled("classifier", make_tokens)]
    ml = fit(model, Delta(model), data, num_data=N, epochs=150, lr=5e-2, kl_weight=0.0, progress=False)
    assert ml.history[-1] < 0.05
    model2 = SequenceClassifier(make_bert(), KINDS["lora"](TARGETS["bert"]), priors.Normal(1e-3), num_labels=LABELS)
    mapped = fit(model2, Delta(model2), data, num_data=N, epochs=150, lr=5e-2, progress=False)
    w = mapped.posterior.mean()
    nll = float(F.cross_entropy(model2.run(w, data[0][0]), data[0][1]))
    assert nll > 0.9  # the tight prior, when on, keeps the weights near 0 and the fit near chance (log 3 = 1.1)


def test_kl_schedule_ramps_linearly_and_fit_records_it(make_bert, make_tokens):
    assert [kl_schedule(s, 2.0, 4) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert [kl_schedule(s, 0.3, 0) for s in range(3)] == [0.3, 0.3, 0.3]
    model = SequenceClassifier(make_bert(), KINDS["lora"](TARGETS["bert"]), num_labels=LABELS)
    data = [labelled("classifier", make_tokens)]
    result = fit(model, MeanField(model), data, num_data=N, epochs=6, kl_anneal_steps=4, progress=False)
    assert result.kl_weights == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def _fit_and_predict(seed: int, make_bert, make_tokens):
    model = SequenceClassifier(make_bert(), KINDS["hybrid"](TARGETS["bert"]), num_labels=LABELS)
    data = [labelled("classifier", make_tokens)]
    result = fit(model, MeanField(model, init_scale=0.1), data, num_data=N, epochs=4, lr=1e-2, seed=seed,
                 progress=False)
    return result.history, predict(result.posterior, data, num_samples=3, seed=seed).probs


def test_same_seed_is_bit_identical_and_another_seed_differs(make_bert, make_tokens):
    history, probs = _fit_and_predict(0, make_bert, make_tokens)
    pyro.set_rng_seed(123)  # the global state before fit must not matter
    history_again, probs_again = _fit_and_predict(0, make_bert, make_tokens)
    other_history, other_probs = _fit_and_predict(1, make_bert, make_tokens)
    assert history == history_again and torch.equal(probs, probs_again)
    assert history != other_history and not torch.equal(probs, other_probs)


SENTENCES = ["a gripping, beautifully acted film", "dull and far too long", "I loved every minute of it", "a mess"]


@pytest.mark.slow
def test_packaged_minilm_is_a_frozen_bert_and_hybrid_peft_fits_and_predicts_on_it():
    from pyro_bhpeft import load_backbone
    from pyro_bhpeft.backbone import PACKAGED_MODELS, prefix_refusal

    backbone, tokenizer, name = load_backbone("minilm")
    assert name == "minilm" and type(backbone).__name__ == "BertModel" and not backbone.training
    assert backbone.config.hidden_size == 384 and backbone.config.num_hidden_layers == 6
    assert PACKAGED_MODELS["minilm"].model_type == backbone.config.model_type and prefix_refusal("minilm") is None
    assert not any(p.requires_grad for p in backbone.parameters())
    plain = {k: v.clone() for k, v in backbone.state_dict().items()}
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    data = [({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor([1, 0, 1, 0]))]
    model = SequenceClassifier(backbone, PeftConfig.hybrid(r=4, bottleneck=8, prefix_length=4), num_labels=2)
    result = fit(model, MeanField(model), data, num_data=4, max_steps=2, epochs=2, backbone_name=name, progress=False)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(result.history)))
    frozen = {_plain_name(k): v for k, v in model.backbone.state_dict().items()}
    assert frozen.keys() == plain.keys() and all(torch.equal(frozen[k], plain[k]) for k in plain)
    pred = predict(result.posterior, data, num_samples=3)
    assert pred.probs.shape == (4, 2) and torch.allclose(pred.probs.sum(-1), torch.ones(4))
    assert (pred.mutual_information >= 0).all() and torch.allclose(
        pred.predictive_entropy, pred.expected_entropy + pred.mutual_information, atol=1e-6)


@pytest.mark.slow
def test_packaged_mpnet_fits_lora_and_adapter_and_refuses_a_prefix_in_one_line():
    """The five-wheel MPNet loads frozen; LoRA + adapter fit and predict on it; its attention does not run through
    transformers' registry, so a prefix is refused by name before any fit."""
    from pyro_bhpeft import load_backbone
    from pyro_bhpeft.backbone import PACKAGED_MODELS, prefix_refusal
    from pyro_bhpeft.config import AdapterConfig, ConfigError, LoraConfig

    backbone, tokenizer, name = load_backbone("mpnet")
    assert name == "mpnet" and type(backbone).__name__ == "MPNetModel" and backbone.config.hidden_size == 768
    assert PACKAGED_MODELS["mpnet"].model_type == backbone.config.model_type and prefix_refusal("mpnet")
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    data = [({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor([1, 0, 1, 0]))]
    model = SequenceClassifier(backbone, PeftConfig(lora=LoraConfig(r=4), adapter=AdapterConfig(bottleneck=8)),
                               num_labels=2)
    result = fit(model, MeanField(model), data, num_data=4, max_steps=2, epochs=2, backbone_name=name, progress=False)
    assert all(torch.isfinite(torch.tensor(result.history)))
    pred = predict(result.posterior, data, num_samples=3)
    assert pred.probs.shape == (4, 2) and torch.allclose(pred.probs.sum(-1), torch.ones(4))
    with pytest.raises(ConfigError, match="prefix-tuning needs.*MPNetModel does not: drop 'prefix'"):
        SequenceClassifier(load_backbone("mpnet").model, PeftConfig.hybrid(r=4, bottleneck=8, prefix_length=4),
                           num_labels=2)


def test_max_steps_without_epochs_is_refused_and_only_caps_the_epochs_steps(make_bert, make_tokens):
    model = SequenceClassifier(make_bert(), KINDS["lora"](TARGETS["bert"]), num_labels=LABELS)
    data = [labelled("classifier", make_tokens)]
    with pytest.raises(ValueError, match="epochs must be >= 1.*max_steps only caps"):
        fit(model, MeanField(model), data, num_data=N, epochs=0, max_steps=3, progress=False)
    assert fit(model, MeanField(model), data * 2, num_data=N, epochs=2, max_steps=3, progress=False).steps == 3
    assert fit(model, MeanField(model), data, num_data=N, epochs=2, max_steps=5, progress=False).steps == 2
