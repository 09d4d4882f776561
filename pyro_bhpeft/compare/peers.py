"""The comparison's post-hoc and peer methods, each built on a fit kept under ``fits/`` (:func:`cached_fit`):
our diagonal-GGN Laplace, TFB, LoRA through the peft library, IVON-LoRA and Laplace-LoRA (laplace-torch)."""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import torch

from ..config import ConfigError
from ..io import write_json
from .bench import Bench, PeakMemory, Scored, post_hoc_dir
from .record import Method, cached_fit

__all__ = ["LAPLACE", "PEFT_LORA", "TFB_THRESHOLD", "TFB_SAMPLES", "laplace_fit", "tfb_method", "ivon_method",
           "laplace_torch_method", "peft_lora", "trained_peft", "peft_model"]

LAPLACE = "laplace"  # the post-hoc Laplace posterior, saved as fits/laplace-seed{seed}
PEFT_LORA = "peft-lora"  # seed s's trained peft LoRA, kept at fits/peft-lora-seed{s} for the Laplace-LoRA peers
TRAINABLE_FILE = "trainable.safetensors"  # the trainable weights of a peft LoRA fit (safetensors: loading runs no code)
TFB_THRESHOLD = 0.3  # relative anchor-NLL change: of 0.01, 0.03, 0.1, 0.3, the lowest validation NLL (docs/selection)
TFB_SAMPLES = 10  # the authors' prediction samples


def _posterior_and_json(name: str) -> tuple[Callable, Callable]:
    """``write`` and ``load`` for a cached posterior with its facts in ``name``.json."""
    def write(value: tuple[Any, dict], stage) -> None:
        value[0].write_to(stage)
        write_json(stage / f"{name}.json", value[1])

    def load_with(bench: Bench) -> Callable:
        from ..posterior import Posterior

        return lambda path: (Posterior.load(path, backbone=bench.backbone()),
                             json.loads((path / f"{name}.json").read_text()))

    return write, load_with


def laplace_fit(bench: Bench, seed: int) -> tuple[Any, float, float, int, dict[str, Any]]:
    """The Laplace posterior around seed ``seed``'s LoRA (computed once, saved under ``fits/``), with
    its train seconds (LoRA fit + GGN), peak MB, trainable count and notes."""
    from ..baselines import laplace_posterior

    point, facts = bench.fitted(bench.protocol.recipe(seed))

    def build() -> tuple[Any, dict]:
        with PeakMemory() as peak:
            fit = laplace_posterior(point, bench.train_loader(seed), num_data=bench.num_train,
                                    max_examples=bench.protocol.laplace_examples, progress=bench.progress)
        return fit.posterior, {"seconds": fit.seconds, "peak_mb": peak.mb, "prior_precision": fit.prior_precision,
                               "ggn_examples": fit.examples}

    write, load_with = _posterior_and_json("laplace")
    posterior, saved = cached_fit(post_hoc_dir(bench.out, LAPLACE, seed), "laplace.json", build, write, load_with(bench))
    notes = {"prior_precision": saved["prior_precision"], "ggn_examples": saved["ggn_examples"]}
    return (posterior, facts["seconds"] + saved["seconds"], max(facts["peak_mb"], saved["peak_mb"]),
            facts["trainable"], notes)


def tfb_method(threshold: float = TFB_THRESHOLD, samples: int = TFB_SAMPLES) -> Method:
    """TFB around the deterministic LoRA fit: anchors are the first ``laplace_examples`` shuffled training
    examples; the posterior is kept at ``fits/tfb-{threshold}-seed{seed}``."""
    name = f"tfb-{threshold:g}"

    def run(bench: Bench, seed: int) -> Scored:
        from ..baselines import tfb_posterior
        from ..baselines._common import first_batches
        from ..predict import predict

        point, facts = bench.fitted(bench.protocol.recipe(seed))

        def build() -> tuple[Any, dict]:
            anchor, _ = first_batches(bench.train_loader(seed), bench.protocol.laplace_examples)
            fit = tfb_posterior(point, anchor, threshold=threshold, seed=seed)
            return fit.posterior, {"seconds": fit.seconds, "sigma": fit.sigma, "path": fit.path}

        write, load_with = _posterior_and_json("tfb")
        posterior, saved = cached_fit(post_hoc_dir(bench.out, name, seed), "tfb.json", build, write, load_with(bench))
        preds = bench.predict_all(lambda loader: predict(posterior, loader, num_samples=samples, seed=seed))
        return Scored(preds, facts["seconds"] + saved["seconds"], facts["peak_mb"], facts["trainable"],
                      {"sigma": saved["sigma"]})

    return Method(f"TFB around the LoRA fit (Shi et al. 2025), threshold {threshold:g}", run, has_scales=True,
                  base_fit={}, post_hoc=name)


def peft_model(bench: Bench, seed: int):
    """A fresh :class:`PeftLoraModel` for ``seed``'s recipe, initialised from ``seed``."""
    from ..baselines import PeftLoraModel
    from ..models.base import default_pooling

    backbone = bench.backbone()
    torch.manual_seed(seed)  # LoRA and head initialisation
    answers = bench.spec.answer_ids if bench.spec.kind == "answer_choice" else None  # a decoder's answer letters
    return PeftLoraModel(backbone, bench.protocol.recipe(seed).peft.lora, len(bench.spec.label_names) or None,
                         default_pooling(backbone), answer_ids=answers)  # num_labels None: one score per choice


def train_peft(bench: Bench, seed: int, ivon: Mapping[str, Any] | None = None):
    """``seed``'s peft LoRA trained with Adam, or with IVON under the ``ivon`` settings (``ess`` and changes to
    :data:`~pyro_bhpeft.baselines.IVON_SETTINGS`), on the protocol's budget: (model, optimizer, facts)."""
    from ..baselines import ivon_optimizer, train_peft_lora

    recipe = bench.protocol.recipe(seed)
    with PeakMemory() as peak:
        model = peft_model(bench, seed)
        optimizer = ivon_optimizer(model.trainable(), **ivon) if ivon is not None else None
        fit = train_peft_lora(model, bench.train_loader(seed), epochs=recipe.epochs, lr=recipe.lr,
                              max_steps=recipe.max_steps, progress=bench.progress, optimizer=optimizer,
                              sample=(lambda: optimizer.sampled_params(train=True)) if optimizer else None,
                              clip_norm=None if optimizer else 1.0, warmup_ratio=recipe.warmup_ratio,
                              lr_decay=recipe.lr_decay)
    return model, optimizer, {"seconds": fit.seconds, "peak_mb": peak.mb,
                              "trainable": sum(p.numel() for p in model.trainable())}


def trained_peft(bench: Bench, seed: int):
    """``seed``'s Adam-trained peft LoRA (trained once, its trainable weights kept under ``fits/``) and facts."""
    def load(path) -> tuple[Any, dict]:
        from safetensors.torch import load_file

        model = peft_model(bench, seed)
        weights = load_file(path / TRAINABLE_FILE)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(weights[name])
        return model, json.loads((path / "fit.json").read_text())

    def write(value: tuple[Any, dict], stage) -> None:
        model, facts = value
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  stage / TRAINABLE_FILE)
        write_json(stage / "fit.json", facts)

    # keyed on the safetensors file: an older version's trainable.pt (a pickle) is never read, its fit is redone
    return cached_fit(post_hoc_dir(bench.out, PEFT_LORA, seed), TRAINABLE_FILE,
                      lambda: train_peft(bench, seed)[::2], write, load)


def peft_lora(bench: Bench, seed: int) -> Scored:
    """LoRA through the peft library, trained with Adam: the fit the Laplace-LoRA peers share, trained once."""
    from ..baselines import peft_predict

    model, facts = trained_peft(bench, seed)
    preds = bench.predict_all(lambda loader: peft_predict(model, loader))
    return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])


IVON_INSTALL = (("peft", "ivon"), "pip install peft ivon-opt")


def ivon_method(description: str, settings: Callable[[Bench], Mapping[str, Any]]) -> Method:
    """IVON-LoRA: the peft LoRA trained by IVON under ``settings(bench)``, its posterior sampled at prediction."""
    def run(bench: Bench, seed: int) -> Scored:
        from ..baselines import ivon_predict

        model, optimizer, facts = train_peft(bench, seed, ivon=settings(bench))
        k = bench.protocol.samples
        preds = bench.predict_all(lambda loader: ivon_predict(model, optimizer, loader, num_samples=k, seed=seed))
        return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])

    return Method(description, run, requires=IVON_INSTALL)


def ivon_authors(bench: Bench) -> dict[str, Any]:
    from ..baselines import ivon_task_settings

    return ivon_task_settings(bench.protocol.task)


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

        model, facts = trained_peft(bench, seed)

        def build() -> tuple[Any, float]:
            with PeakMemory() as peak:
                fit = laplace_torch_fit(model, bench.train_loader(seed), structure=structure, progress=bench.progress)
            return fit, peak.mb

        def write(value: tuple[Any, float], stage) -> None:
            value[0].write_to(stage)
            write_json(stage / "peak.json", {"peak_mb": value[1]})

        def load(path) -> tuple[Any, float]:
            return LaplaceTorchFit.load(model, path), json.loads((path / "peak.json").read_text())["peak_mb"]

        fit, peak_mb = cached_fit(post_hoc_dir(bench.out, name, seed), "laplace.json", build, write, load)
        preds = bench.predict_all(lambda loader: laplace_torch_predict(fit, loader, link=link, seed=seed))
        return Scored(preds, facts["seconds"] + fit.seconds, max(facts["peak_mb"], peak_mb), facts["trainable"],
                      {"prior_precision": fit.prior_precision, "ggn_examples": fit.examples})

    shape = {"kron": "Kronecker-factored (KFAC)", "diag": "diagonal"}[structure]
    return Method(f"Laplace-LoRA (Yang et al. 2024) through laplace-torch: {shape} GGN around the peft LoRA, "
                  f"marginal-likelihood prior, GLM predictive ({link})", run,
                  requires=(("peft", "laplace", "curvlinops"), LAPLACE_TORCH_INSTALL))
