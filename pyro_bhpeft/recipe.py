"""A training recipe: everything that defines one fit, as one frozen, JSON-able value.

The CLI, the demo, the comparison harness and dynamic fine-tuning all build their runs from a
:class:`Recipe`, so "same data, head, steps and seeds" is one object compared for equality.

Example::

    recipe = Recipe(guide="mean-field", peft=PeftConfig.hybrid(), epochs=1)
    result = train(recipe, load_task("sentiment"))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .config import ConfigError, PeftConfig
from .io import asdict_since
from .registry import Registry

if TYPE_CHECKING:  # importing this module stays free of torch: the command line reads its defaults
    import torch

    from .infer import FitResult
    from .priors import Prior

__all__ = ["Recipe", "PRESETS", "PRESET_NAMES", "KIND_DEFAULTS", "kind_default", "kind_recipe", "NOT_FOR_ROUNDS",
           "built_on", "rounds_warning", "build_model", "build_guide", "train",
           "fit_options", "loaders", "recipe_backbone", "EVAL_BATCH_SIZE"]

EVAL_BATCH_SIZE = 64  # batch size of every evaluation loader
LR_DECAYS = ("none", "linear")
MC_SCORINGS = ("letters", "cloze", "cloze-mean")  # see pyro_bhpeft.data.prompts.for_backbone
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # the keys of backbone.DTYPES (a test checks they agree)
_ADDED = ("warmup_ratio", "lr_decay", "dtype", "gate_lr", "random_blocks", "mc_scoring", "predict_samples")  # fields added later, written only when set (see Recipe.to_dict)


@dataclass(frozen=True)
class Recipe:
    """One fit. ``guide``: a name in :data:`pyro_bhpeft.guides.GUIDES` (``mean-field``, ``low-rank`` with
    ``rank``, ``map``: point mass with the prior, ``mle``: point mass without it, plain deterministic
    LoRA); ``prior``: a name in :data:`pyro_bhpeft.priors.PRIORS`, of scale ``prior_scale``.
    ``scale_param`` and ``scale_lr`` set how the mean-field scales are parameterised and learned."""

    backbone: str = "minilm"
    peft: PeftConfig = field(default_factory=PeftConfig)
    prior: str = "normal"
    prior_scale: float = 1.0
    guide: str = "mean-field"
    rank: int = 8
    init_scale: float = 1e-2
    init_scale_high: float | None = None  # with it, initial scales are drawn between the two (BLoB)
    deterministic: tuple[str, ...] = ()
    scale_param: str = "softplus"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 2e-3
    scale_lr: float | None = None
    kl_weight: float = 1.0
    kl_anneal_steps: int = 0
    kl_step_lr: float | None = None  # BLoB's separate SGD step on the KL term (None: one joint step)
    kl_reweighting: str = "blob"  # with kl_step_lr: "blob" (2^i / (2^(M+1) - 1)) or "uniform" (1 / M)
    flipout: bool = False  # decorrelate LoRA A's noise across tokens (BLoB)
    max_length: int = 64
    seed: int = 0
    dropout: bool = False  # train with the backbone's own dropout on (MC dropout)
    dtype: str = "float32"  # the frozen backbone's precision (bfloat16: PEFT weights, KL, likelihood stay float32)
    warmup_ratio: float = 0.0  # fraction of the steps over which the learning rates warm up linearly from 0
    lr_decay: str = "none"  # "none" or "linear" (to 0 at the last step, after the warm-up; as BLoB's runs)
    gate_lr: float | None = None  # learning rate of the gate logits of gated LoRA (None: lr)
    random_blocks: int | None = None  # variance only in the top N blocks and the head (predict shares the trunk)
    mc_scoring: str = "letters"  # multiple choice on a causal LM: answer letters, or "cloze"/"cloze-mean"
    predict_samples: int | None = None  # draws predict/evaluate take by default (0: the posterior mean; None: 8)

    def __post_init__(self) -> None:
        from .backbone import DTYPES
        from .guides import GUIDES, SCALE_PARAMS
        from .priors import PRIORS

        GUIDES[self.guide], PRIORS[self.prior]  # unknown names: one line listing the choices
        if self.scale_param not in SCALE_PARAMS:
            raise ConfigError(f"unknown scale_param {self.scale_param!r}; choose one of {', '.join(SCALE_PARAMS)}")
        for name in ("epochs", "batch_size", "max_length", "rank"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0 or not self.prior_scale > 0 or not self.init_scale > 0 or self.kl_weight < 0:
            raise ConfigError("lr, prior_scale and init_scale must be positive and kl_weight >= 0")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.gate_lr is not None and not self.gate_lr > 0:
            raise ConfigError(f"gate_lr must be positive (or unset: the gates learn at lr), got {self.gate_lr}")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"unknown lr_decay {self.lr_decay!r}; choose one of {', '.join(LR_DECAYS)}")
        if self.random_blocks is not None and (isinstance(self.random_blocks, bool) or self.random_blocks < 1
                                               or self.guide != "mean-field"):
            raise ConfigError(f"random_blocks is a number of top blocks >= 1 for the mean-field guide, got "
                              f"{self.random_blocks!r} with guide {self.guide!r}")
        if self.mc_scoring not in MC_SCORINGS:
            raise ConfigError(f"unknown mc_scoring {self.mc_scoring!r}; choose one of {', '.join(MC_SCORINGS)}")
        if self.predict_samples is not None and (isinstance(self.predict_samples, bool) or self.predict_samples < 0):
            raise ConfigError(f"predict_samples is a number of posterior draws >= 0 (0: the posterior mean), "
                              f"got {self.predict_samples!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio is a fraction of the steps in [0, 1), got {self.warmup_ratio}")
        object.__setattr__(self, "deterministic", tuple(self.deterministic))

    @property
    def initial_scale(self) -> float | tuple[float, float]:
        return self.init_scale if self.init_scale_high is None else (self.init_scale, self.init_scale_high)

    @property
    def samples(self) -> int:
        """The posterior draws its runs predict with by default (``predict_samples``, else the library's)."""
        from .predict import DEFAULT_SAMPLES

        return DEFAULT_SAMPLES if self.predict_samples is None else self.predict_samples

    def with_(self, **changes: Any) -> "Recipe":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON; fields added since 0.2 are written only when set, so the keys of older
        fits (a hash of this dict, see ``compare.bench.fit_dir``) stay valid."""
        d = asdict_since(self, _ADDED)
        d["peft"] = self.peft.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        d = dict(d)
        d["peft"] = PeftConfig.from_dict(d["peft"])
        return cls(**d)

    def site_lr(self) -> dict[str, float] | None:
        """Learning rates of particular sites' locations for :func:`~pyro_bhpeft.infer.fit` (the gates')."""
        if self.gate_lr is None:
            return None
        from .layers.gates import GATE_SITES

        return {f"*.{name}": self.gate_lr for name in GATE_SITES}

    def make_prior(self) -> Prior:
        from .priors import PRIORS

        return PRIORS[self.prior](self.prior_scale)


def kind_default(kind: str | None) -> str | None:
    """The preset ``fit`` starts from on a task of ``kind`` when none is named (None: ``Recipe()`` itself)."""
    return KIND_DEFAULTS.get(kind) if kind else None


def kind_recipe(kind: str | None) -> Recipe:
    """The recipe ``fit`` starts from on a task of ``kind`` when none is named and no option is given."""
    name = kind_default(kind)
    return Recipe().with_(**PRESETS[name]) if name else Recipe()


# Presets whose posterior-as-prior rounds forget more than the mean-field recipe's, and whose runs switched to
# that recipe from round 2 on forget more still (docs/results/forgetting.md): rounds should start from
# ``mean-field-lora``. A new round of a run fitted with one keeps its recipe, with a warning.
NOT_FOR_ROUNDS = ("bayes-lora-fs",)


def built_on(recipe: Recipe, name: str) -> bool:
    """Whether ``recipe`` is preset ``name`` or built on it: the preset's fields and kinds of PEFT layer (their
    sizes may be the user's)."""
    preset = PRESETS[name]
    return (recipe.peft.kinds == preset["peft"].kinds
            and all(getattr(recipe, k) == v for k, v in preset.items() if k != "peft"))


def rounds_warning(recipe: Recipe, start: str = "--recipe mean-field-lora") -> str | None:
    """A line for a new round of a run fitted with ``recipe``, if it is built on a preset of
    :data:`NOT_FOR_ROUNDS` (:func:`built_on`), else None; ``start``: how the caller names the rounds recipe."""
    for name in NOT_FOR_ROUNDS:
        if built_on(recipe, name):
            return (f"this run's recipe ({name}) forgets earlier rounds' data more than mean-field-lora when its "
                    f"posterior is the next prior (docs/results/forgetting.md); for rounds, fit round 1 with {start}")
    return None


def build_model(recipe: Recipe, spec: Any, backbone: torch.nn.Module, prior: Prior | None = None,
                targets: torch.Tensor | None = None):
    """The model for a task ``spec`` (its ``kind``, ``label_names``); regression targets set the scaling."""
    from pyro_bhpeft.models import TASK_KINDS

    return TASK_KINDS[spec.kind].for_task(backbone, recipe.peft, prior or recipe.make_prior(), spec, targets)


def build_guide(recipe: Recipe, model: Any):
    """The recipe's guide on ``model``, from the guide registry."""
    from pyro_bhpeft.guides import GUIDES

    if recipe.random_blocks is not None:  # the PEFT sites of the lower blocks are point masses
        from .trunk import lower_block_sites

        recipe = recipe.with_(deterministic=(*recipe.deterministic, *lower_block_sites(model, recipe.random_blocks)))
    return GUIDES[recipe.guide].build(model, recipe)


def loaders(recipe: Recipe, data: Any, tokenizer: Any, splits: tuple[str, ...] = ()) -> dict[str, Any]:
    """Tokenised DataLoaders: ``train`` shuffled by the recipe's seed, the other splits in order."""
    from pyro_bhpeft.data import make_loader, tokenize

    tokenized = tokenize(data, tokenizer, max_length=recipe.max_length)
    out = {"train": make_loader(tokenized["train"], recipe.batch_size, shuffle=True, seed=recipe.seed)}
    for split in splits:
        out[split] = make_loader(tokenized[split], EVAL_BATCH_SIZE)
    return out


def recipe_backbone(recipe: Recipe):
    """The recipe's backbone, loaded in its precision."""
    from .backbone import DTYPES, load_backbone

    return load_backbone(recipe.backbone, dtype=DTYPES[recipe.dtype])


def train(recipe: Recipe, data: Any, *, prior: Prior | None = None, progress: bool = True,
          meta: dict | None = None, backbone: Any = None, checkpoint: Any = None, device: Any = None) -> FitResult:
    """Fit ``recipe`` on ``data`` (a :class:`pyro_bhpeft.data.TaskData`) on ``device`` (default: where the
    backbone is); returns the FitResult. ``checkpoint``: a :class:`~pyro_bhpeft.checkpoint.Checkpoint`.
    The same path as :class:`~pyro_bhpeft.front.BayesianPEFT`'s ``fit``: this is that front door, built from a
    recipe."""
    from .front import BayesianPEFT

    front = BayesianPEFT.from_recipe(recipe, backbone=backbone, prior=prior, device=device)
    return front.fit(data, progress=progress, checkpoint=checkpoint, meta=meta).result


def fit_options(recipe: Recipe) -> dict[str, Any]:
    """The keyword arguments of :func:`~pyro_bhpeft.infer.fit` that ``recipe`` sets (all but the data)."""
    from pyro_bhpeft.guides import GUIDES

    from .infer import KLStep

    return {"epochs": recipe.epochs, "max_steps": recipe.max_steps, "lr": recipe.lr, "scale_lr": recipe.scale_lr,
            "kl_weight": recipe.kl_weight if GUIDES[recipe.guide].uses_prior else 0.0,
            "kl_anneal_steps": recipe.kl_anneal_steps,
            "kl_step": KLStep(recipe.kl_step_lr, recipe.kl_reweighting) if recipe.kl_step_lr else None,
            "flipout": recipe.flipout, "warmup_ratio": recipe.warmup_ratio, "lr_decay": recipe.lr_decay,
            "site_lr": recipe.site_lr(), "seed": recipe.seed, "backbone_name": recipe.backbone}


# Named recipes: the changes each makes to a :class:`Recipe` (``Recipe().with_(**PRESETS[name])``). Built on first
# use (their PEFT configs need the layer registry, and so torch); their names are known without building them.
PRESET_NAMES = ("mean-field-lora", "bh-peft-0.1", "blob", "bh-peft-fs", "bayes-lora-fs", "bayes-lora-fs-mean",
                "lora-gates", "bh-peft-low-rank")
# The default recipe of ``fit`` per task kind where it is not ``Recipe()``: a preset's name. Chosen by the
# default-recipe suite's rule on validation (docs/suite/README.md, docs/results/suite.md).
KIND_DEFAULTS = {"regression": "bh-peft-low-rank"}


def _builtin_presets(presets: Registry) -> None:
    from .layers.gates import GatedLoraConfig

    presets.register("mean-field-lora", {  # Recipe()'s own: mean-field LoRA and head under N(0, 1), the rounds recipe
        "peft": PeftConfig(), "guide": "mean-field", "prior": "normal", "prior_scale": 1.0})
    presets.register("bh-peft-0.1", {"peft": PeftConfig.hybrid()})  # the 0.1 demo recipe: N(0, 1) on every weight
    presets.register("blob", {  # BLoB as its authors run it (Wang et al. 2024)
        "peft": PeftConfig(), "guide": "mean-field", "prior": "blob", "prior_scale": 0.2,
        "deterministic": ("*.lora_B", "head.*"), "scale_param": "rho2",
        "init_scale": (0.05 / 2 ** 0.5) ** 2, "init_scale_high": 0.05 ** 2,  # rho ~ U(0.0354, 0.05)
        "flipout": True, "kl_step_lr": 0.02, "kl_reweighting": "blob"})
    presets.register("bh-peft-fs", {  # the hybrid with variance where it matters, under a function-space prior
        "peft": PeftConfig.hybrid(), "guide": "mean-field", "prior": "function-space", "prior_scale": 1.0,
        "deterministic": ("*.lora_B", "*.adapter_up", "*.adapter_up_bias", "*.adapter_down_bias", "*.prefix", "head.*"),
        "scale_param": "log", "scale_lr": 0.05, "flipout": True})
    presets.register("bayes-lora-fs", {  # the same on LoRA alone: variance on A, B and the head point masses
        **presets["bh-peft-fs"], "peft": PeftConfig()})
    presets.register("bayes-lora-fs-mean", {  # that fit, predicting with its posterior mean: one forward, no draws
        **presets["bayes-lora-fs"], "predict_samples": 0})  # (compare's bayes-lora-fs-mean; docs/suite)
    presets.register("bh-peft-low-rank", {  # the hybrid under N(0, 1) with a rank-8 low-rank guide: the regression default,
        "peft": PeftConfig.hybrid(), "guide": "low-rank", "epochs": 5})  # for the 5 epochs the suite measured it at
    presets.register("lora-gates", {  # Bayesian rank and bit gates (Meo et al. 2024): the gates random, the weights MLE
        "peft": PeftConfig(lora=None, **{"gated-lora": GatedLoraConfig()}), "guide": "mean-field", "prior": "flat",
        "deterministic": ("*.lora_A", "*.lora_B", "head.*"), "scale_param": "log", "scale_lr": 0.05,
        "gate_lr": 0.1})  # chosen on validation (docs/selection): the gates need their own rate to move at all


class _LazyRegistry(Registry):
    """A :class:`Registry` that fills itself by calling ``load(self)`` the first time it is read."""

    def __init__(self, what: str, load: Any) -> None:
        self._load, self._loaded = load, False
        super().__init__(what)

    @property
    def _entries(self) -> dict[str, Any]:
        if not self._loaded:
            self._loaded = True
            self._load(self)
        return self.__dict__["_table"]

    @_entries.setter
    def _entries(self, table: dict[str, Any]) -> None:
        self.__dict__["_table"] = table


PRESETS: Registry[dict[str, Any]] = _LazyRegistry("recipe preset", _builtin_presets)
