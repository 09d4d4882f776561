"""The comparison methods: the :class:`Method` record, the :data:`METHODS` registry and the built-ins.

A method is a ``run(bench, seed) -> Scored`` function plus the facts the harness reads about it (its
description, whether it is a point estimate, whether its posterior has per-site scales worth a figure,
which shared fit it builds on). Adding one is one line::

    register_method("mean-field-adapter",
                    Method.sampled("Bayesian adapter only, mean-field",
                                   {"guide": "mean-field", "peft": PeftConfig(lora=None, adapter=AdapterConfig())},
                                   has_scales=True))
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..config import ConfigError, LoraConfig, PeftConfig
from ..io import atomic_dir, write_json
from ..layers.gates import GatedLoraConfig
from ..registry import Registry
from .bench import Bench, PeakMemory, Scored, fit_dir, post_hoc_dir
from .protocol import Protocol

__all__ = ["Method", "METHODS", "DEFAULT_METHODS", "register_method"]

LAPLACE = "laplace"  # the post-hoc Laplace posterior, saved as fits/laplace-seed{seed}
_DROPOUT = {"dropout": True}
_LORA_DROPOUT = {"dropout": True, "peft": PeftConfig(LoraConfig(lora_dropout=0.1))}  # the peers' LoRA dropout rate
_HYBRID = {"peft": PeftConfig.hybrid()}


@dataclass(frozen=True)
class Method:
    """A comparison method and the facts the harness reads about it.

    ``run(bench, seed)`` fits (or loads the shared fits it needs from ``bench``) and predicts the test
    and OOD examples. ``point_mass``: it predicts with a point estimate, no posterior samples.
    ``has_scales``: its posterior has per-site scales worth a scale-forest figure (read from
    :meth:`posterior_dir`). ``base_fit``: the recipe changes (to :meth:`Protocol.recipe`) of the
    :meth:`Bench.fitted` fit it predicts from or builds on, ``{}`` for the deterministic LoRA, None when it
    fits outside the cache. ``post_hoc``: the name of the posterior it builds on ``base_fit`` and keeps
    at :func:`post_hoc_dir` (the Laplace approximation), or None. ``requires``: the optional modules it
    imports and the command that installs them, checked before any cell runs (:meth:`check_installed`).
    ``backbone_dropout``: it samples the backbone's own dropout, so a backbone without any (Llama-family
    models) is refused before any cell runs.
    """

    description: str
    run: Callable[[Bench, int], Scored]
    point_mass: bool = False
    has_scales: bool = False
    base_fit: Mapping[str, Any] | None = None
    post_hoc: str | None = None
    requires: tuple[tuple[str, ...], str] | None = None
    backbone_dropout: bool = False

    def check_installed(self, name: str) -> None:
        """Raise a one-line :class:`ConfigError` naming the install command if a required module is missing."""
        if self.requires is None:
            return
        import importlib.util

        modules, install = self.requires
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"method {name!r} needs {', '.join(missing)}, which is not installed: {install}")

    def __post_init__(self) -> None:
        if not isinstance(self.description, str) or not self.description:
            raise ConfigError("a comparison method needs a one-line description")
        if not callable(self.run):
            raise ConfigError(f"a comparison method's run must be callable (bench, seed) -> Scored, got {self.run!r}")
        if self.post_hoc is not None and self.base_fit is None:
            raise ConfigError(f"post-hoc posterior {self.post_hoc!r} needs the base_fit it is built on")
        if self.has_scales and self.base_fit is None:
            raise ConfigError("has_scales needs a saved posterior: give base_fit (and post_hoc if it is post-hoc)")

    @classmethod
    def sampled(cls, description: str, changes: Mapping[str, Any] | None = None, *, point_mass: bool = False,
                has_scales: bool = False, samples: int | None = None) -> "Method":
        """The fit of ``Protocol.recipe(seed, **changes)``, predicting with ``protocol.samples`` posterior
        samples (``samples`` where the method's authors fix their own; none when ``point_mass``)."""
        changes = dict(changes or {})

        def run(bench: Bench, seed: int) -> Scored:
            from ..predict import predict

            posterior, facts = bench.fitted(bench.protocol.recipe(seed, **changes))
            k = 0 if point_mass else samples or bench.protocol.samples
            preds = bench.predict_all(lambda loader: predict(posterior, loader, num_samples=k, seed=seed))
            return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])

        return cls(description, run, point_mass=point_mass, has_scales=has_scales, base_fit=changes)

    def posterior_dir(self, out: Path, protocol: Protocol, seed: int) -> Path | None:
        """The saved posterior this method predicts with for ``seed``, or None when none is on disk."""
        if self.base_fit is None:
            return None
        path = (post_hoc_dir(out, self.post_hoc, seed) if self.post_hoc is not None
                else fit_dir(out, protocol.recipe(seed, **self.base_fit)))
        return path if path.exists() else None


METHODS: Registry[Method] = Registry("comparison method")


def register_method(name: str, method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` available to :func:`run_compare` and ``pyro-bhpeft compare --methods`` as ``name``;
    ``METHODS.unregister(name)`` removes it."""
    if not isinstance(method, Method):
        raise ConfigError(f"register a Method record, got {type(method).__name__}")
    return METHODS.register(name, method, replace=replace)


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


def _laplace_fit(bench: Bench, seed: int) -> tuple[Any, float, float, int, dict[str, Any]]:
    """The Laplace posterior around seed ``seed``'s LoRA (computed once, saved under ``fits/``), with
    its train seconds (LoRA fit + GGN), peak MB, trainable count and notes."""
    from ..baselines import laplace_posterior
    from ..posterior import Posterior

    point, facts = bench.fitted(bench.protocol.recipe(seed))
    path = post_hoc_dir(bench.out, LAPLACE, seed)
    if (path / "laplace.json").exists():
        saved = json.loads((path / "laplace.json").read_text())
        posterior = Posterior.load(path, backbone=bench.backbone())
    else:
        with PeakMemory() as peak:
            fit = laplace_posterior(point, bench.train_loader(seed), num_data=bench.num_train,
                                    max_examples=bench.protocol.laplace_examples, progress=bench.progress)
        saved = {"seconds": fit.seconds, "peak_mb": peak.mb, "prior_precision": fit.prior_precision,
                 "ggn_examples": fit.examples}
        with atomic_dir(path, overwrite=True) as stage:
            fit.posterior.write_to(stage)
            write_json(stage / "laplace.json", saved)
        posterior = fit.posterior
    notes = {"prior_precision": saved["prior_precision"], "ggn_examples": saved["ggn_examples"]}
    return (posterior, facts["seconds"] + saved["seconds"], max(facts["peak_mb"], saved["peak_mb"]),
            facts["trainable"], notes)


def _laplace(bench: Bench, seed: int) -> Scored:
    from ..predict import predict

    posterior, seconds, peak_mb, trainable, notes = _laplace_fit(bench, seed)
    k = bench.protocol.samples
    preds = bench.predict_all(lambda loader: predict(posterior, loader, num_samples=k, seed=seed))
    return Scored(preds, seconds, peak_mb, trainable, notes)


def _laplace_glm(bench: Bench, seed: int) -> Scored:
    from ..baselines import linearised_predict

    posterior, seconds, peak_mb, trainable, notes = _laplace_fit(bench, seed)
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
    val = predict(point, bench.eval_loaders["validation"], num_samples=0)
    temperature = fit_temperature(val.probs, val.labels)
    seconds = time.perf_counter() - tick
    preds = bench.predict_all(lambda loader: tempered(predict(point, loader, num_samples=0), temperature))
    return Scored(preds, facts["seconds"] + seconds, facts["peak_mb"], facts["trainable"] + 1,
                  {"temperature": temperature})


def _peft_model(bench: Bench, seed: int):
    """A fresh :class:`PeftLoraModel` for ``seed``'s recipe, initialised from ``seed``."""
    from ..baselines import PeftLoraModel
    from ..models.base import default_pooling

    backbone = bench.backbone()
    torch.manual_seed(seed)  # LoRA and head initialisation
    answers = bench.spec.answer_ids if bench.spec.kind == "answer_choice" else None  # a decoder's answer letters
    return PeftLoraModel(backbone, bench.protocol.recipe(seed).peft.lora, len(bench.spec.label_names) or None,
                         default_pooling(backbone), answer_ids=answers)  # num_labels None: one score per choice


def _train_peft(bench: Bench, seed: int, ivon: Mapping[str, Any] | None = None):
    """``seed``'s peft LoRA trained with Adam, or with IVON under the ``ivon`` settings (``ess`` and changes to
    :data:`~pyro_bhpeft.baselines.IVON_SETTINGS`), on the protocol's budget: (model, optimizer, facts)."""
    from ..baselines import ivon_optimizer, train_peft_lora

    recipe = bench.protocol.recipe(seed)
    with PeakMemory() as peak:
        model = _peft_model(bench, seed)
        optimizer = ivon_optimizer(model.trainable(), **ivon) if ivon is not None else None
        fit = train_peft_lora(model, bench.train_loader(seed), epochs=recipe.epochs, lr=recipe.lr,
                              max_steps=recipe.max_steps, progress=bench.progress, optimizer=optimizer,
                              sample=(lambda: optimizer.sampled_params(train=True)) if optimizer else None,
                              clip_norm=None if optimizer else 1.0, warmup_ratio=recipe.warmup_ratio,
                              lr_decay=recipe.lr_decay)
    return model, optimizer, {"seconds": fit.seconds, "peak_mb": peak.mb,
                              "trainable": sum(p.numel() for p in model.trainable())}


def _peft_lora(bench: Bench, seed: int) -> Scored:
    """LoRA through the peft library, trained with Adam: the fit the Laplace-LoRA peers share, trained once."""
    from ..baselines import peft_predict

    model, facts = _trained_peft(bench, seed)
    preds = bench.predict_all(lambda loader: peft_predict(model, loader))
    return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])


def _ivon(bench: Bench, seed: int, settings: Callable[[Bench], Mapping[str, Any]]) -> Scored:
    """IVON-LoRA: the peft LoRA trained by IVON under ``settings(bench)``, its posterior sampled at prediction."""
    from ..baselines import ivon_predict

    model, optimizer, facts = _train_peft(bench, seed, ivon=settings(bench))
    k = bench.protocol.samples
    preds = bench.predict_all(lambda loader: ivon_predict(model, optimizer, loader, num_samples=k, seed=seed))
    return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])


def _ivon_authors(bench: Bench) -> dict[str, Any]:
    from ..baselines import ivon_task_settings

    return ivon_task_settings(bench.protocol.task)


def _ivon_ess_n(bench: Bench) -> dict[str, Any]:
    return {"ess": bench.num_train, "hess_init": 3e-4, "rescale_lr": True, "weight_decay": 1e-4}


PEFT_LORA = "peft-lora"  # seed s's trained peft LoRA, kept at fits/peft-lora-seed{s} for the Laplace-LoRA peers


def _trained_peft(bench: Bench, seed: int):
    """``seed``'s Adam-trained peft LoRA (trained once, its trainable weights kept under ``fits/``) and facts."""
    path = post_hoc_dir(bench.out, PEFT_LORA, seed)
    if (path / "fit.json").exists():
        model = _peft_model(bench, seed)
        weights = torch.load(path / "trainable.pt", weights_only=True)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(weights[name])
        return model, json.loads((path / "fit.json").read_text())
    model, _, facts = _train_peft(bench, seed)
    with atomic_dir(path, overwrite=True) as stage:
        torch.save({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, stage / "trainable.pt")
        write_json(stage / "fit.json", facts)
    return model, facts


def laplace_torch_method(structure: str = "kron", link: str = "mc") -> Method:
    """Laplace-LoRA through laplace-torch around seed ``s``'s peft LoRA (``structure`` "kron" or "diag"), its
    GLM predictive with ``link`` "mc" (the authors' 100,000 logit draws) or "probit"; the fitted curvature and
    prior precision are kept at ``fits/laplace-torch-{structure}-seed{s}`` and shared by both links."""
    from ..baselines.laplace_torch import LAPLACE_TORCH_INSTALL, LINKS, STRUCTURES

    if structure not in STRUCTURES or link not in LINKS:
        raise ConfigError(f"Laplace-LoRA takes structure in {STRUCTURES} and link in {LINKS}, got {structure!r}, "
                          f"{link!r}")
    name = f"laplace-torch-{structure}"

    def run(bench: Bench, seed: int) -> Scored:
        from ..baselines import LaplaceTorchFit, laplace_torch_fit, laplace_torch_predict

        model, facts = _trained_peft(bench, seed)
        path = post_hoc_dir(bench.out, name, seed)
        if (path / "laplace.json").exists():
            fit = LaplaceTorchFit.load(model, path)
            peak_mb = json.loads((path / "peak.json").read_text())["peak_mb"]
        else:
            with PeakMemory() as peak:
                fit = laplace_torch_fit(model, bench.train_loader(seed), structure=structure, progress=bench.progress)
            peak_mb = peak.mb
            with atomic_dir(path, overwrite=True) as stage:
                fit.write_to(stage)
                write_json(stage / "peak.json", {"peak_mb": peak_mb})
        preds = bench.predict_all(lambda loader: laplace_torch_predict(fit, loader, link=link, seed=seed))
        return Scored(preds, facts["seconds"] + fit.seconds, max(facts["peak_mb"], peak_mb), facts["trainable"],
                      {"prior_precision": fit.prior_precision, "ggn_examples": fit.examples})

    shape = {"kron": "Kronecker-factored (KFAC)", "diag": "diagonal"}[structure]
    return Method(f"Laplace-LoRA (Yang et al. 2024) through laplace-torch: {shape} GGN around the peft LoRA, "
                  f"marginal-likelihood prior, GLM predictive ({link})", run,
                  requires=(("peft", "laplace", "curvlinops"), LAPLACE_TORCH_INSTALL))


register_method("lora", Method.sampled("deterministic LoRA (maximum likelihood, our fit)", point_mass=True))
register_method("map", Method.sampled("LoRA, MAP with the N(0,1) prior", {"guide": "map"}, point_mass=True))
_PEFT = (("peft",), "pip install peft")
register_method("peft-lora", Method("LoRA trained through the peft library", _peft_lora, point_mass=True,
                                    requires=_PEFT))
register_method("mc-dropout", Method("MC dropout on LoRA (backbone dropout in training and K test passes)",
                                     _mc_dropout, base_fit=_DROPOUT, backbone_dropout=True))
register_method("mc-dropout-lora", Method("MC dropout on the LoRA input (rate 0.1, as BLoB and Laplace-LoRA run it "
                                          "on LLMs whose backbone has no dropout)", _mc_dropout_lora,
                                          base_fit=_LORA_DROPOUT))
register_method("ensemble", Method("deep ensemble of deterministic LoRAs", _ensemble, base_fit={}))
register_method("laplace", Method("post-hoc diagonal-GGN Laplace around the LoRA fit, sampled predictive", _laplace,
                                  has_scales=True, base_fit={}, post_hoc=LAPLACE))
register_method("laplace-glm", Method("the same Laplace posterior, linearised (GLM) predictive", _laplace_glm,
                                      base_fit={}, post_hoc=LAPLACE))
register_method("temperature", Method("deterministic LoRA + temperature scaling on validation", _temperature,
                                      point_mass=True, base_fit={}))
register_method("mean-field", Method.sampled("BH-PEFT hybrid (LoRA+adapter+prefix), mean-field",
                                             {"guide": "mean-field", **_HYBRID}, has_scales=True))
register_method("low-rank", Method.sampled("BH-PEFT hybrid, low-rank (rank 8)", {"guide": "low-rank", **_HYBRID},
                                           has_scales=True))
register_method("mean-field-lora", Method.sampled("Bayesian LoRA only, mean-field", {"guide": "mean-field"},
                                                  has_scales=True))

TFB_THRESHOLD = 0.3  # relative anchor-NLL change: of 0.01, 0.03, 0.1, 0.3, the lowest validation NLL (docs/selection)
BLOB_SAMPLES = TFB_SAMPLES = 10  # the authors' prediction samples


def tfb_method(threshold: float = TFB_THRESHOLD, samples: int = TFB_SAMPLES) -> Method:
    """TFB around the deterministic LoRA fit: anchors are the first ``laplace_examples`` shuffled training
    examples; the posterior is kept at ``fits/tfb-{threshold}-seed{seed}``."""
    name = f"tfb-{threshold:g}"

    def run(bench: Bench, seed: int) -> Scored:
        from ..baselines import tfb_posterior
        from ..baselines._common import first_batches
        from ..posterior import Posterior
        from ..predict import predict

        point, facts = bench.fitted(bench.protocol.recipe(seed))
        path = post_hoc_dir(bench.out, name, seed)
        if (path / "tfb.json").exists():
            saved, posterior = json.loads((path / "tfb.json").read_text()), Posterior.load(path, backbone=bench.backbone())
        else:
            anchor, _ = first_batches(bench.train_loader(seed), bench.protocol.laplace_examples)
            fit = tfb_posterior(point, anchor, threshold=threshold, seed=seed)
            saved, posterior = {"seconds": fit.seconds, "sigma": fit.sigma, "path": fit.path}, fit.posterior
            with atomic_dir(path, overwrite=True) as stage:
                posterior.write_to(stage)
                write_json(stage / "tfb.json", saved)
        preds = bench.predict_all(lambda loader: predict(posterior, loader, num_samples=samples, seed=seed))
        return Scored(preds, facts["seconds"] + saved["seconds"], facts["peak_mb"], facts["trainable"],
                      {"sigma": saved["sigma"]})

    return Method(f"TFB around the LoRA fit (Shi et al. 2025), threshold {threshold:g}", run, has_scales=True,
                  base_fit={}, post_hoc=name)


def _preset(name: str) -> dict[str, Any]:
    from ..recipe import PRESETS

    return dict(PRESETS[name])


register_method("blob", Method.sampled("BLoB (Wang et al. 2024): variance on LoRA A, flipout, split KL step",
                                       _preset("blob"), has_scales=True, samples=BLOB_SAMPLES))
register_method("tfb", tfb_method())
register_method("bh-peft-fs", Method.sampled("BH-PEFT hybrid, variance on LoRA A and adapter down-projections, "
                                             "function-space prior", _preset("bh-peft-fs"), has_scales=True))
register_method("bayes-lora-fs", Method.sampled("Bayesian LoRA, variance on A only, function-space prior, flipout",
                                                _preset("bayes-lora-fs"), has_scales=True))
register_method("bayes-lora-fs-mean", Method.sampled("the bayes-lora-fs fit predicting with its posterior mean (K = 0)",
                                                     _preset("bayes-lora-fs"), point_mass=True))
register_method("blob-mean", Method.sampled("the blob fit predicting with its posterior mean (K = 0): how much of "
                                            "BLoB's calibration is its mean function's", _preset("blob"),
                                            point_mass=True))


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


_IVON = (("peft", "ivon"), "pip install peft ivon-opt")
register_method("ivon", Method("IVON-LoRA (Cong et al. 2024): LoRA trained by IVON with its authors' per-task "
                               "settings, its posterior sampled", lambda bench, seed: _ivon(bench, seed, _ivon_authors),
                               requires=_IVON))
register_method("ivon-ess-n", Method("IVON with ess = the training-set size and ivon-opt's defaults (lr rescaling, "
                                     "weight decay 1e-4): our earlier setting, not the authors'",
                                     lambda bench, seed: _ivon(bench, seed, _ivon_ess_n), requires=_IVON))
register_method("lora-gates", gates_method())
register_method("lora-gates-nonoise", gates_method(  # the first version (no relaxation noise), kept to compare
    {"peft": PeftConfig(lora=None, **{"gated-lora": GatedLoraConfig(noise="none", rank_prior=-1.0)})}))
register_method("laplace-kfac", laplace_torch_method("kron", "mc"))
register_method("laplace-kfac-probit", laplace_torch_method("kron", "probit"))
register_method("laplace-diag", laplace_torch_method("diag", "mc"))
DEFAULT_METHODS = tuple(METHODS)
