"""pyro-bhpeft: Bayesian hybrid parameter-efficient fine-tuning of pretrained transformers with Pyro.

A frozen Hugging Face transformer gets LoRA, Adapter and prefix-tuning weights declared as
``pyro.sample`` sites with priors; guides (mean-field, low-rank, point mass) approximate their
posterior by SVI; predictions come with predictive entropy and mutual information, and the posterior
becomes the prior of the next round.

Example::

    from pyro_bhpeft import BayesianPEFT, load_task
    from pyro_bhpeft.priors import Laplace

    data = load_task("sentiment", max_examples=256)
    model = BayesianPEFT("minilm", task=data, r=8, lora_alpha=16, prior=Laplace(0.1), guide="low-rank")
    model.fit(data, epochs=1)
    pred = model.predict(["a gripping, funny film"], samples=8)

Names are imported on first use (PEP 562), so ``import pyro_bhpeft`` and the command line's ``--help``
do not load torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "BayesianPEFT": ".front", "load_task": ".data",
    "load_backbone": ".backbone", "PeftConfig": ".config", "LoraConfig": ".config", "AdapterConfig": ".config",
    "PrefixConfig": ".config", "ConfigError": ".errors", "Recipe": ".recipe",
    "fit": ".infer", "FitResult": ".infer", "predict": ".predict", "ClassPrediction": ".predict",
    "RegressionPrediction": ".predict", "Posterior": ".posterior", "SiteMarginal": ".posterior",
    "posterior_prior": ".continual", "PosteriorPrior": ".continual",
    "export_peft_adapter": ".peft_io", "import_peft_adapter": ".peft_io",
}
_SUBMODULES = ("priors",)

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """The package, keeping exported functions that share a submodule's name (``predict``) as its attributes:
    importing a submodule sets the parent's attribute of that name to the module, which would hide them."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
