"""The front door: a Hugging Face model with Bayesian PEFT weights, in a handful of verbs.

:class:`BayesianPEFT` wraps a frozen backbone (a packaged alias, a local folder, a hub id, or a
``transformers`` model you already hold), puts LoRA (and optionally adapter and prefix) weights on it as
``pyro.sample`` sites under a prior, and approximates their posterior with a guide. LoRA is configured
in the peft library's words (``r``, ``lora_alpha``, ``target_modules``, ``lora_dropout``; a
``peft.LoraConfig`` is accepted too). Everything else of a fit (epochs, learning rate, sequence length,
...) is a field of :class:`~pyro_bhpeft.recipe.Recipe`, passed by name.

Example::

    from pyro_bhpeft import BayesianPEFT, load_task
    from pyro_bhpeft.priors import Laplace

    data = load_task("sentiment", max_examples=256)
    model = BayesianPEFT("minilm", task=data, r=8, lora_alpha=16, prior=Laplace(0.1), guide="low-rank")
    model.fit(data, epochs=1)
    pred = model.predict(["a gripping, funny film"], samples=8)     # probs, entropy, mutual information
    nxt = model.next_round()                                        # the posterior is the next prior
"""

from __future__ import annotations

import contextlib
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, PeftConfig
from .inputs import as_task_data, is_loader, is_texts, task_spec, unlabelled
from .peft_io import peft_parts, start_guide_at
from .recipe import PRESETS, Recipe

__all__ = ["BayesianPEFT"]
_RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))


class BayesianPEFT:
    """A frozen transformer with Bayesian PEFT weights: ``fit``, ``predict``, ``evaluate``,
    ``inference_data``, ``next_round``, ``save`` / ``load``.

    ``backbone``: a packaged alias (``minilm``, ``mpnet``, ``smollm2``), a local Hugging Face folder, a hub
    id, or a model object with ``tokenizer=``. ``task``: a :class:`~pyro_bhpeft.data.TaskData` (from
    ``load_task``), a registered task name, a :class:`~pyro_bhpeft.data.TaskSpec`, ``"regression"``, or
    leave it out and pass ``num_labels=`` (or let :meth:`fit` read the classes from the data).
    ``prior``: a :class:`~pyro_bhpeft.priors.Prior` or a registered name (scale ``prior_scale``);
    ``guide``: a registered name (``mean-field``, ``low-rank``, ``map``, ``mle``) or a callable
    ``model -> guide``. ``recipe``: a :class:`Recipe` or preset name to start from; ``options`` change any
    of its fields (``epochs``, ``lr``, ``max_length``, ``rank``, ...).
    """

    def __init__(self, backbone: Any = None, task: Any = None, *, tokenizer: Any = None, num_labels: int | None = None,
                 peft: Any = None, r: int | None = None, lora_alpha: float | None = None,
                 target_modules: Sequence[str] | None = None, lora_dropout: float | None = None,
                 prior: Any = None, guide: Any = None, recipe: Recipe | str | None = None,
                 device: Any = None, **options: Any) -> None:
        base = recipe if isinstance(recipe, Recipe) else Recipe().with_(**PRESETS[recipe]) if recipe else Recipe()
        unknown = sorted(set(options) - set(_RECIPE_FIELDS))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; BayesianPEFT takes the Recipe fields: "
                              f"{', '.join(_RECIPE_FIELDS)}")
        words = {"r": r, "lora_alpha": lora_alpha, "target_modules": target_modules, "lora_dropout": lora_dropout}
        named = {"prior": prior, "guide": guide, "backbone": backbone}
        changes = {**options, **{k: v for k, v in named.items() if isinstance(v, str)}}

        def asked(base: Recipe) -> Recipe:  # the caller's options on ``base``
            parts = {}
            if peft is not None or any(v is not None for v in words.values()):
                parts["peft"] = peft_parts(peft if peft is not None else base.peft, **words)
            return base.with_(**changes, **parts)

        self.recipe = asked(base)
        # no recipe named: a task kind with a default of its own (a regression) starts from it once the kind is known
        self._on_kind = None if recipe is not None else asked
        self._prior = None if prior is None or isinstance(prior, str) else prior
        self._guide_builder = None if guide is None or isinstance(guide, str) else guide
        self._backbone_arg, self._tokenizer_arg, self.device = backbone, tokenizer, device
        self._bb: Any = None
        self.spec = task_spec(task, num_labels)
        self._kind_known(self.spec)
        self.model: Any = None
        self.result: Any = None  # the last fit's FitResult
        self.round, self.parent = 1, None
        self._start: dict[str, Any] = {}  # site name -> where the guide starts (an imported peft adapter)

    def _kind_known(self, spec: Any, fit_options: dict[str, Any] | None = None) -> None:
        """Once the task kind is known and no recipe was named: start from that kind's default recipe, if it has
        one (:func:`~pyro_bhpeft.recipe.kind_default`), under the options given (``fit_options``: the fit's)."""
        from .recipe import kind_default

        preset = kind_default(getattr(spec, "kind", None))
        if self._on_kind is not None and preset is not None:  # the backbone as loaded (a model object's own name)
            self.recipe = self._on_kind(Recipe().with_(**PRESETS[preset])).with_(
                backbone=self.recipe.backbone, **(fit_options or {}))
        if spec is not None:
            self._on_kind = None

    @classmethod
    def from_recipe(cls, recipe: Recipe, *, backbone: Any = None, prior: Any = None, device: Any = None
                    ) -> "BayesianPEFT":
        """The front door for a :class:`Recipe` (``backbone``: an already loaded :class:`Backbone`)."""
        front = cls(recipe=recipe, prior=prior, device=device)
        front._bb = backbone
        return front

    @classmethod
    def from_peft(cls, adapter: Any, task: Any = None, *, backbone: Any = None, tokenizer: Any = None,
                  center_prior: bool = False, **kwargs: Any) -> "BayesianPEFT":
        """Start from a LoRA adapter trained with the peft library (its folder, or a ``PeftModel``): its config
        becomes ours, and the guide starts at its weights (so ``guide="mle"`` with no fit is the adapter as it
        is, ready for :meth:`tfb`). ``center_prior``: centre the prior of its LoRA weights on them (a
        variational fit then regularises toward the adapter). ``backbone`` defaults to the adapter's base."""
        from .peft_io import import_peft_adapter, read_peft_adapter

        read = read_peft_adapter(adapter)
        base = backbone if backbone is not None else read.base_model
        if base is None:
            raise ConfigError("the adapter does not name its base model; pass backbone=")
        kwargs.setdefault("recipe", Recipe())  # a LoRA adapter: never a task kind's default recipe
        front = cls(base, task, tokenizer=tokenizer, **kwargs)
        adapted = import_peft_adapter(read, front.backbone.model)
        front.recipe = front.recipe.with_(peft=PeftConfig(adapted.config))
        front._start = {**adapted.weights, **(adapted.head or {})}
        if center_prior:
            from .continual import PosteriorPrior
            import torch

            scale = front.recipe.prior_scale
            front._prior = PosteriorPrior({k: v.clone() for k, v in adapted.weights.items()},
                                          {k: torch.full_like(v, scale) for k, v in adapted.weights.items()},
                                          front.prior)
        return front

    def tfb(self, anchor: Any, *, threshold: float = 0.01, split: str = "train", **kwargs: Any) -> "BayesianPEFT":
        """Training-free Bayesianization (TFB, Shi et al. 2025) of this point estimate: isotropic noise in each
        LoRA's column space, its size the largest that changes the NLL of the model's own predictions on the
        ``anchor`` data by at most ``threshold``. Unfitted, the point estimate is the guide's start (an imported
        adapter). Returns a new round-1 front door holding the TFB posterior."""
        from .baselines.tfb import tfb_posterior
        from .data.prompts import for_backbone
        from .posterior import Posterior

        if self.result is None:
            task = for_backbone(as_task_data(anchor, self.spec, split=split), self.backbone.model,
                                self.backbone.tokenizer, self.recipe.mc_scoring)
            model = self._build(task)
            with self._in_force():
                point = Posterior(model, self._new_guide(model), backbone_name=self.recipe.backbone,
                                  meta={"recipe": self.recipe.to_dict(), **self._task_meta()})
        else:
            point = self.posterior
        fitted = tfb_posterior(point, self.loader(anchor, split=split), threshold=threshold, **kwargs)
        out = BayesianPEFT.__new__(BayesianPEFT)
        out.__dict__.update(self.__dict__)
        out.result = _unfitted(fitted.posterior, seconds=fitted.seconds)  # sigma in posterior.meta["tfb"]
        return out

    # ---- what the fit runs on --------------------------------------------------------------
    @property
    def backbone(self):
        """The loaded :class:`~pyro_bhpeft.backbone.Backbone` (model, tokenizer, name), loaded on first use."""
        if self._bb is None:
            from .backbone import Backbone, bare_model, freeze
            from .recipe import recipe_backbone

            given = self._backbone_arg
            if given is None or isinstance(given, str):
                self._bb = recipe_backbone(self.recipe)
            else:
                if self._tokenizer_arg is None:
                    raise ConfigError("a model object needs its tokenizer: BayesianPEFT(model, tokenizer=tokenizer)")
                name = getattr(getattr(given, "config", None), "_name_or_path", None) or None
                self._bb = Backbone(freeze(bare_model(given)), self._tokenizer_arg, name)
                if name:
                    self.recipe = self.recipe.with_(backbone=name)
        return self._bb

    @property
    def posterior(self):
        """The fitted :class:`~pyro_bhpeft.posterior.Posterior` (an error before :meth:`fit`)."""
        if self.result is None:
            raise ConfigError("nothing is fitted yet; call fit(data) first (or BayesianPEFT.load(path))")
        return self.result.posterior

    @property
    def prior(self):
        return self._prior if self._prior is not None else self.recipe.make_prior()

    @contextlib.contextmanager
    def _in_force(self):
        """Rounds share one model (and backbone); the prior in force is this round's."""
        if self.model is not None:
            self.model.prior = self.prior
        yield

    def _build(self, data: Any) -> Any:
        """The model for ``data``'s task on the backbone (made once; later rounds share it)."""
        import torch

        from .backbone import resolve_device
        from .recipe import build_model

        if self.model is None:
            targets = torch.tensor(data.splits["train"]["label"], dtype=torch.float32)  # regression standardises
            self.model = build_model(self.recipe, data.spec, self.backbone.model, self.prior, targets)
            if self.device is not None:
                self.model.to(resolve_device(self.device))
            self.spec = data.spec
        return self.model

    def _new_guide(self, model: Any) -> Any:
        from .recipe import build_guide

        guide = self._guide_builder(model) if self._guide_builder is not None else build_guide(self.recipe, model)
        if self._start:  # an imported adapter: the guide starts at its weights
            start_guide_at(model, guide, self._start)
        return guide

    # ---- verbs ----------------------------------------------------------------------------
    def fit(self, data: Any, *, progress: bool = True, checkpoint: Any = None, meta: dict | None = None,
            **options: Any) -> "BayesianPEFT":
        """Fit the posterior on ``data``: a ``TaskData``, a ``datasets.Dataset``/``DatasetDict``, a pandas
        DataFrame, a dict of columns, ``(texts, labels)``, or a loader of tokenised ``(inputs, labels)`` batches.
        ``options`` change recipe fields for this fit (``epochs``, ``max_steps``, ``lr``, ...). Returns self."""
        import contextlib as _cl

        from .backbone import dropout_active
        from .data.prompts import for_backbone
        from .infer import fit
        from .recipe import fit_options, loaders

        if options:
            self.recipe = self.recipe.with_(**options)
        bb = self.backbone
        if is_loader(data):
            if self.model is None:
                raise ConfigError("a loader of tokenised batches needs the task up front: BayesianPEFT(..., task=...)"
                                  " or fit a TaskData / DataFrame / (texts, labels) first")
            model, train_loader = self.model, data
        else:
            data = for_backbone(as_task_data(data, self.spec), bb.model, bb.tokenizer, self.recipe.mc_scoring)
            if self.model is None:
                self._kind_known(data.spec, options)
            model = self._build(data)
        with self._in_force():
            guide = self._new_guide(model)
            if not is_loader(data):
                train_loader = loaders(self.recipe, data, bb.tokenizer)["train"]
            opts = fit_options(self.recipe)
            if self._guide_builder is not None:
                opts["kl_weight"] = self.recipe.kl_weight
            facts = {"recipe": self.recipe.to_dict(), "round": self.round, **self._task_meta(), **(meta or {})}
            with dropout_active(model) if self.recipe.dropout else _cl.nullcontext():
                self.result = fit(model, guide, train_loader, **opts, progress=progress, checkpoint=checkpoint,
                                  meta=facts)
        return self

    def _task_meta(self) -> dict[str, Any]:
        spec = self.spec
        if spec is None:
            return {}
        return {"task": spec.name, "kind": spec.kind, "label_names": list(spec.label_names),
                "num_choices": spec.num_choices}

    def loader(self, data: Any, *, split: str = "test", batch_size: int | None = None) -> Any:
        """Tokenised batches of ``data`` (anything :meth:`fit` takes, or a list of texts: no labels needed)."""
        from .data import make_loader, tokenize
        from .data.prompts import for_backbone
        from .recipe import EVAL_BATCH_SIZE

        if is_loader(data):
            return data
        texts_only = is_texts(data)
        if self.spec is None:
            raise ConfigError("the task is not known yet; fit first or pass task= to BayesianPEFT")
        task = as_task_data(unlabelled(data, self.spec) if texts_only else data, self.spec, split=split)
        task = for_backbone(task, self.backbone.model, self.backbone.tokenizer, self.recipe.mc_scoring)
        if split not in task.splits:
            split = next(s for s in ("test", "validation", "train") if s in task.splits)
        batches = make_loader(tokenize(task, self.backbone.tokenizer, self.recipe.max_length)[split],
                              batch_size or EVAL_BATCH_SIZE)
        return [inputs for inputs, _ in batches] if texts_only else batches

    def predict(self, data: Any, *, samples: int | None = None, seed: int = 0, split: str = "test",
                mode: str = "sample", **kwargs: Any):
        """Predictions with uncertainty: a :class:`~pyro_bhpeft.predict.ClassPrediction` (``probs``,
        ``predictive_entropy``, ``mutual_information``) or ``RegressionPrediction``. ``data``: a list of texts
        (no labels needed) or anything :meth:`fit` takes (its ``split``). ``samples``: posterior draws (default:
        the recipe's ``predict_samples``, else 8; 0 = the posterior mean). ``mode``: ``sample``, ``closed-form``,
        ``shared-trunk`` or ``auto`` (:mod:`pyro_bhpeft.modes`; :meth:`predictive_mode` says which ``auto`` takes)."""
        from .modes import predict_with

        posterior, mode = self.posterior, self.predictive_mode(mode)
        k = self.recipe.samples if samples is None else samples
        return predict_with(posterior, self.loader(data, split=split), mode, num_samples=k, seed=seed, **kwargs)

    def predictive_mode(self, mode: str = "auto") -> str:
        """The mode :meth:`predict` uses for ``mode`` (``auto``: the cheapest exact one this run supports)."""
        from .modes import resolve_mode

        return resolve_mode(self.posterior, mode)

    def evaluate(self, data: Any, *, samples: int | None = None, seed: int = 0, split: str = "test") -> dict:
        """Accuracy, NLL, Brier, ECE (or MSE, Gaussian NLL, coverage; a language model's token perplexity, accuracy,
        ECE and NLL) of labelled ``data`` under the posterior."""
        from .runs import evaluate_split

        k = self.recipe.samples if samples is None else samples
        if self.spec is not None and self.spec.kind == "language_model":
            from .language import token_metrics

            return token_metrics(self.posterior, self.loader(data, split=split), num_samples=k, seed=seed)
        return evaluate_split(self.posterior, self.loader(data, split=split), k, seed=seed)

    def generate(self, prompts: Sequence[str], *, samples: int | None = None, max_new_tokens: int = 16,
                 seed: int = 0) -> list[dict]:
        """Greedy answers under the posterior mean, each with its likelihood under ``samples`` posterior draws,
        predictive and expected NLL, and token entropy and mutual information (:func:`pyro_bhpeft.language.generate`)."""
        from .language import generate

        k = self.recipe.samples if samples is None else samples
        return generate(self.posterior, self.backbone.tokenizer, prompts, max_new_tokens=max_new_tokens,
                        num_samples=k, seed=seed)

    def inference_data(self, data: Any = None, *, samples: int = 100, seed: int = 0, split: str = "train"):
        """ArviZ ``InferenceData`` of the posterior (with ``data``: predictive, observed and log-likelihood)."""
        from .analysis.inference_data import to_inference_data

        batches = None if data is None else self.loader(data, split=split)
        with self._in_force():
            return to_inference_data(self.posterior, batches, num_samples=samples, seed=seed)

    def next_round(self, *, temper: float = 1.0) -> "BayesianPEFT":
        """A new round on the same backbone and model whose prior is this posterior (``temper`` multiplies every
        prior variance: 1 is exact Bayesian updating). Nothing is reloaded; this round's posterior is kept.
        The round keeps this recipe; a recipe measured to forget across rounds warns
        (:func:`~pyro_bhpeft.recipe.rounds_warning`)."""
        import warnings

        from .continual import posterior_prior
        from .recipe import rounds_warning

        if line := rounds_warning(self.recipe, start='recipe="mean-field-lora"'):
            warnings.warn(line, stacklevel=2)

        with self._in_force():
            prior = posterior_prior(self.posterior, temper=temper)
        nxt = BayesianPEFT.__new__(BayesianPEFT)
        nxt.__dict__.update(self.__dict__)
        nxt._prior, nxt.result, nxt.round, nxt.parent = prior, None, self.round + 1, self
        return nxt

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the posterior as a run directory (JSON + safetensors) that ``load`` and the CLI read."""
        from .runs import save_run

        with self._in_force():
            self.posterior.backbone_name = self.posterior.backbone_name or self.recipe.backbone
            self.posterior.meta.update({"recipe": self.recipe.to_dict(), "round": self.round, **self._task_meta()})
            return save_run(path, self.result, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, backbone: Any = None, device: Any = None) -> "BayesianPEFT":
        """A saved run or posterior, ready to predict or to start the next round."""
        from .data import TaskSpec
        from .posterior import Posterior

        posterior = Posterior.load(path, backbone=backbone, device=device)
        meta = posterior.meta
        recipe = Recipe.from_dict(meta["recipe"]) if "recipe" in meta else Recipe(backbone=posterior.backbone_name)
        front = cls(recipe=recipe, prior=posterior.model.prior, device=device)
        if backbone is None and posterior.backbone_name:  # the loaded model's own backbone: only its tokenizer is read
            from .backbone import Backbone, load_tokenizer

            front._bb = Backbone(posterior.model.backbone, load_tokenizer(posterior.backbone_name),
                                 posterior.backbone_name)
        front.model, front.round = posterior.model, int(meta.get("round", 1))
        if meta.get("kind"):
            front.spec = TaskSpec(meta.get("task") or "task", meta["kind"], label_names=tuple(meta.get("label_names")
                                  or ()), num_choices=int(meta.get("num_choices") or 0))
        front.result = _unfitted(posterior)
        return front

    def __repr__(self) -> str:
        fitted = "fitted" if self.result is not None else "not fitted"
        return (f"BayesianPEFT({self.recipe.backbone!r}, peft={self.recipe.peft!r}, prior={self.prior!r}, "
                f"guide={self.recipe.guide if self._guide_builder is None else self._guide_builder!r}, "
                f"round {self.round}, {fitted})")


def _unfitted(posterior: Any, seconds: float = 0.0) -> Any:
    """A fit result for a posterior that no SVI run produced (loaded, or made post hoc): empty curves."""
    from .infer import FitResult

    return FitResult(posterior, history=[], kl_weights=[], step_seconds=[], steps=0, seconds=seconds)
