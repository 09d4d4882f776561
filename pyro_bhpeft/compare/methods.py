"""The comparison methods a user would pick: each published method we compare against and our own recipes.

The record and registry live in :mod:`.record`, the post-hoc and peer methods in :mod:`.peers`. Adding a
method is one line::

    register_method("mean-field-adapter",
                    Method.sampled("Bayesian adapter only, mean-field",
                                   {"guide": "mean-field", "peft": PeftConfig(lora=None, adapter=AdapterConfig())},
                                   has_scales=True))

Experiment-only variants (ablations of one comparison) are registered by the benchmark that needs them
(``benchmarks/lab_methods.py``), not here. :data:`DEFAULT_METHODS` are the methods the installed extras
allow (:func:`available_methods` also says why the others are skipped).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from ..config import ConfigError, LoraConfig, PeftConfig
from .bench import Bench, Scored
from .peers import (LAPLACE, PEFT_LORA, TFB_SAMPLES, TFB_THRESHOLD, ivon_authors, ivon_method, laplace_fit,
                    laplace_torch_method, peft_lora, tfb_method)
from .record import METHODS, Method, available_methods, cached_fit, library_methods_registered, register_method

__all__ = ["Method", "METHODS", "DEFAULT_METHODS", "register_method", "available_methods", "cached_fit",
           "gates_method", "tfb_method", "laplace_torch_method", "ivon_method", "TFB_THRESHOLD", "LAPLACE", "PEFT_LORA"]

_DROPOUT = {"dropout": True}
_LORA_DROPOUT = {"dropout": True, "peft": PeftConfig(LoraConfig(lora_dropout=0.1))}  # the peers' LoRA dropout rate
_HYBRID = {"peft": PeftConfig.hybrid()}
_TOP2 = {"guide": "mean-field", **_HYBRID, "random_blocks": 2}
BLOB_SAMPLES = TFB_SAMPLES  # the authors' prediction samples


def _mc_dropout(bench: Bench, seed: int, changes: Mapping[str, Any] = _DROPOUT) -> Scored:
    from ..baselines import mc_dropout_predict

    posterior, facts = bench.fitted(bench.protocol.recipe(seed, **changes))
    k = bench.protocol.samples
    preds = bench.predict_all(lambda loader: mc_dropout_predict(posterior, loader, num_samples=k, seed=seed))
    return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])


def _mc_dropout_lora(bench: Bench, seed: int) -> Scored:
    return _mc_dropout(bench, seed, _LORA_DROPOUT)


def _ensemble(bench: Bench, seed: int) -> Scored:
    from ..baselines import ensemble_predict

    members = [bench.fitted(bench.protocol.recipe(seed + 1000 * m)) for m in range(bench.protocol.ensemble_size)]
    preds = bench.predict_all(lambda loader: ensemble_predict([p for p, _ in members], loader))
    return Scored(preds, sum(f["seconds"] for _, f in members), max(f["peak_mb"] for _, f in members),
                  sum(f["trainable"] for _, f in members))


def _laplace(bench: Bench, seed: int) -> Scored:
    from ..predict import predict

    posterior, seconds, peak_mb, trainable, notes = laplace_fit(bench, seed)
    k = bench.protocol.samples
    preds = bench.predict_all(lambda loader: predict(posterior, loader, num_samples=k, seed=seed))
    return Scored(preds, seconds, peak_mb, trainable, notes)


def _laplace_glm(bench: Bench, seed: int) -> Scored:
    from ..baselines import linearised_predict

    posterior, seconds, peak_mb, trainable, notes = laplace_fit(bench, seed)
    k = bench.protocol.samples
    preds = bench.predict_all(lambda loader: linearised_predict(posterior, loader, num_samples=k, seed=seed))
    return Scored(preds, seconds, peak_mb, trainable, notes)


def _temperature(bench: Bench, seed: int) -> Scored:
    from ..baselines import fit_temperature, tempered
    from ..predict import predict

    if "validation" not in bench.eval_loaders:
        raise ConfigError(f"temperature scaling needs a validation split; {bench.spec.name} has none")
    point, facts = bench.fitted(bench.protocol.recipe(seed))
    tick = time.perf_counter()
    validation = bench.eval_loaders["validation"]
    val = predict(point, validation, num_samples=0)

    def point_predictions(loader: Any) -> Any:  # validation's are made already: deterministic, reused
        return val if loader is validation else predict(point, loader, num_samples=0)
    if not point.model.predicts_classes:  # regression: one factor on the predictive variance
        from ..baselines import fit_variance_scale, variance_scaled

        scale = fit_variance_scale(val)
        seconds = time.perf_counter() - tick
        preds = bench.predict_all(lambda loader: variance_scaled(point_predictions(loader), scale))
        return Scored(preds, facts["seconds"] + seconds, facts["peak_mb"], facts["trainable"] + 1,
                      {"variance_scale": scale})
    temperature = fit_temperature(val.probs, val.labels)
    seconds = time.perf_counter() - tick
    preds = bench.predict_all(lambda loader: tempered(point_predictions(loader), temperature))
    return Scored(preds, facts["seconds"] + seconds, facts["peak_mb"], facts["trainable"] + 1,
                  {"temperature": temperature})


def _lora_llla(bench: Bench, seed: int) -> Scored:
    from ..closed_form import closed_form_predict, last_layer_laplace

    point, facts = bench.fitted(bench.protocol.recipe(seed))
    tick = time.perf_counter()
    head = last_layer_laplace(point, bench.train_loader(seed), prior_precision="marglik")
    seconds = time.perf_counter() - tick
    preds = bench.predict_all(lambda loader: closed_form_predict(point, loader, head=head))
    return Scored(preds, facts["seconds"] + seconds, facts["peak_mb"], facts["trainable"],
                  {"prior_precision": head.prior_precision, "laplace_seconds": seconds})


def _top_blocks(bench: Bench, seed: int) -> Scored:
    from ..trunk import shared_trunk_predict

    posterior, facts = bench.fitted(bench.protocol.recipe(seed, **_TOP2))
    k = bench.protocol.samples
    preds = bench.predict_all(lambda loader: shared_trunk_predict(posterior, loader, num_samples=k, seed=seed))
    return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])


def _preset(name: str) -> dict[str, Any]:
    from ..recipe import PRESETS

    return dict(PRESETS[name])


def gates_method(changes: dict[str, Any] | None = None) -> Method:
    """The gated-LoRA fit (the ``lora-gates`` preset with ``changes``) deployed: gates thresholded at their
    posterior means, one deterministic pass; its learned ranks, bits and bit operations (against LoRA r=8 at
    16 bits on the same layers) in the notes."""
    recipe = {**_preset("lora-gates"), **(changes or {})}

    def run(bench: Bench, seed: int) -> Scored:
        from ..layers.gates import bit_operations, gate_summary, hard_gates
        from ..predict import predict

        posterior, facts = bench.fitted(bench.protocol.recipe(seed, **recipe))
        rows = gate_summary(posterior.model, {n: m.loc for n, m in posterior.marginals().items()})
        full = [{**r, "rank": 8, "bits_A": 16, "bits_B": 16} for r in rows]
        with hard_gates(posterior.model):
            preds = bench.predict_all(lambda loader: predict(posterior, loader, num_samples=0))
        notes = {"bops_ratio": bit_operations(rows) / bit_operations(full), "gates": rows}
        return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"], notes)

    return Method("LoRA with Bayesian rank and bit gates (Meo et al. 2024), deployed hard", run, base_fit=recipe)


register_method("lora", Method.sampled("deterministic LoRA (maximum likelihood, our fit)", point_mass=True,
                                       regression=True))
register_method("map", Method.sampled("LoRA, MAP with the N(0,1) prior", {"guide": "map"}, point_mass=True,
                                      regression=True))
register_method("peft-lora", Method("LoRA trained through the peft library", peft_lora, point_mass=True,
                                    requires=(("peft",), "pip install peft")))
register_method("mc-dropout", Method("MC dropout on LoRA (backbone dropout in training and K test passes)",
                                     _mc_dropout, base_fit=_DROPOUT, backbone_dropout=True))
register_method("mc-dropout-lora", Method("MC dropout on the LoRA input (rate 0.1, as BLoB and Laplace-LoRA run it "
                                          "on LLMs whose backbone has no dropout)", _mc_dropout_lora,
                                          base_fit=_LORA_DROPOUT))
register_method("ensemble", Method("deep ensemble of deterministic LoRAs", _ensemble, base_fit={}, regression=True))
register_method("laplace", Method("post-hoc diagonal-GGN Laplace around the LoRA fit, sampled predictive", _laplace,
                                  has_scales=True, base_fit={}, post_hoc=LAPLACE))
register_method("laplace-glm", Method("the same Laplace posterior, linearised (GLM) predictive", _laplace_glm,
                                      base_fit={}, post_hoc=LAPLACE))
register_method("temperature", Method("deterministic LoRA + temperature scaling on validation", _temperature,
                                      point_mass=True, base_fit={}, regression=True))  # regression: variance scaling
register_method("mean-field", Method.sampled("BH-PEFT hybrid (LoRA+adapter+prefix), mean-field",
                                             {"guide": "mean-field", **_HYBRID}, has_scales=True, regression=True))
register_method("lora-llla", Method("deterministic LoRA + last-layer Laplace head (diagonal GGN on the training "
                                     "set, prior precision by its evidence), closed-form probit predictive: one "
                                     "forward", _lora_llla, base_fit={}, linear_head=True))
register_method("mean-field-top2", Method("BH-PEFT hybrid, mean-field with variance only in the top 2 blocks and "
                                          "the head, predicted with the shared trunk",
                                          _top_blocks, has_scales=True,
                                          base_fit=_TOP2, regression=True))
register_method("low-rank", Method.sampled("BH-PEFT hybrid, low-rank (rank 8)", {"guide": "low-rank", **_HYBRID},
                                           has_scales=True, regression=True))
register_method("mean-field-lora", Method.sampled("Bayesian LoRA only, mean-field", {"guide": "mean-field"},
                                                  has_scales=True, regression=True))
register_method("blob", Method.sampled("BLoB (Wang et al. 2024): variance on LoRA A, flipout, split KL step",
                                       _preset("blob"), has_scales=True, samples=BLOB_SAMPLES, regression=True))
register_method("tfb", tfb_method())
register_method("bh-peft-fs", Method.sampled("BH-PEFT hybrid, variance on LoRA A and adapter down-projections, "
                                             "function-space prior", _preset("bh-peft-fs"), has_scales=True))
register_method("bayes-lora-fs", Method.sampled("Bayesian LoRA, variance on A only, function-space prior, flipout",
                                                _preset("bayes-lora-fs"), has_scales=True))
register_method("bayes-lora-fs-mean", Method.sampled("the bayes-lora-fs fit predicting with its posterior mean (K = 0)",
                                                     _preset("bayes-lora-fs"), point_mass=True))
register_method("ivon", ivon_method("IVON-LoRA (Cong et al. 2024): LoRA trained by IVON with its authors' per-task "
                                    "settings, its posterior sampled", ivon_authors))
register_method("lora-gates", gates_method())
register_method("laplace-kfac", laplace_torch_method("kron", "mc"))
register_method("laplace-kfac-probit", laplace_torch_method("kron", "probit"))
register_method("laplace-diag", laplace_torch_method("diag", "mc"))
library_methods_registered()
DEFAULT_METHODS = available_methods()[0]  # what the installed extras allow; the others are skipped
