"""pyro-bhpeft: Bayesian hybrid parameter-efficient fine-tuning of pretrained transformers with Pyro.

A frozen Hugging Face transformer gets LoRA, Adapter and prefix-tuning weights declared as
``pyro.sample`` sites with priors; guides (mean-field, low-rank, point mass) approximate their
posterior by SVI; predictions come with predictive entropy and mutual information.

Example::

    from pyro_bhpeft import PeftConfig, fit, load_backbone, predict, priors
    from pyro_bhpeft.guides import MeanField
    from pyro_bhpeft.models import SequenceClassifier

    backbone, tokenizer, name = load_backbone("minilm")
    model = SequenceClassifier(backbone, PeftConfig.hybrid(), priors.Normal(1.0), num_labels=2)
    result = fit(model, MeanField(model), train_loader, epochs=1)
    prediction = predict(result.posterior, test_loader, num_samples=16)
"""

from . import layers as _layers  # noqa: F401  (registers the built-in PEFT kinds before any config is built)
from . import priors
from .backbone import load_backbone
from .continual import PosteriorPrior, posterior_prior
from .config import AdapterConfig, ConfigError, LoraConfig, PeftConfig, PrefixConfig
from .infer import FitResult, fit
from .posterior import Posterior, SiteMarginal
from .predict import ClassPrediction, RegressionPrediction, predict

__version__ = "0.1.0"

__all__ = [
    "load_backbone", "PeftConfig", "LoraConfig", "AdapterConfig", "PrefixConfig", "ConfigError",
    "priors", "fit", "FitResult", "predict", "ClassPrediction", "RegressionPrediction",
    "Posterior", "SiteMarginal", "posterior_prior", "PosteriorPrior", "__version__",
]
