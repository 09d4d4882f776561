"""The non-variational baselines the comparison harness scores next to BH-PEFT, one module per method.

All of them work on our own models and loaders and give :class:`~pyro_bhpeft.predict.ClassPrediction`
values, so every method is measured with the same metrics:

* :func:`mc_dropout_predict` (:mod:`.mc_dropout`) -- MC dropout (Gal and Ghahramani, 2016).
* :func:`ensemble_predict` (:mod:`.ensemble`) -- a deep ensemble (Lakshminarayanan et al., 2017).
* :func:`laplace_posterior`, :func:`ggn_diagonal` (:mod:`.laplace`) -- post-hoc diagonal-GGN Laplace with an
  evidence-maximising prior precision (MacKay 1992; Immer et al. 2021; Laplace-LoRA, Yang et al. 2024).
* :func:`laplace_torch_fit` / :func:`laplace_torch_predict` (:mod:`.laplace_torch`) -- Laplace-LoRA as its
  authors run it: KFAC (or diagonal) GGN through ``laplace-torch`` around a ``peft`` LoRA, GLM predictive.
* :func:`linearised_predict` (:mod:`.linearised`) -- the linearised (GLM) predictive of a Laplace fit.
* :func:`fit_temperature` / :func:`tempered` (:mod:`.temperature`) -- temperature scaling (Guo et al., 2017).
* :func:`tfb_posterior` (:mod:`.tfb`) -- TFB, training-free Bayesianization of a trained LoRA (Shi et al. 2025).
* :func:`ivon_optimizer` / :func:`ivon_predict` (:mod:`.ivon`) -- IVON-LoRA (Cong et al. 2024) with ``ivon-opt``.
* :class:`PeftLoraModel` / :func:`train_peft_lora` (:mod:`.peft_lora`) -- LoRA through the ``peft`` library:
  the external reference that our maximum-likelihood LoRA must match.

Example::

    from pyro_bhpeft.baselines import laplace_posterior, linearised_predict

    fit = laplace_posterior(map_posterior, train_loader, num_data=len(train_set))
    prediction = linearised_predict(fit.posterior, test_loader, num_samples=64)
"""

from .ensemble import ensemble_predict
from .ivon import IVON_SETTINGS, IVON_TASKS, ivon_optimizer, ivon_predict, ivon_task_settings
from .laplace import LaplaceFit, ggn_diagonal, laplace_posterior
from .laplace_torch import LAPLACE_TORCH_INSTALL, LaplaceTorchFit, laplace_torch_fit, laplace_torch_predict
from .linearised import linearised_predict
from .mc_dropout import mc_dropout_predict
from .peft_lora import PeftLoraModel, peft_predict, train_peft_lora
from .temperature import fit_temperature, fit_variance_scale, tempered, variance_scaled
from .tfb import TFBFit, rotate_lora, tfb_posterior

__all__ = ["mc_dropout_predict", "ensemble_predict", "laplace_posterior", "LaplaceFit", "ggn_diagonal",
           "linearised_predict",
           "fit_temperature", "tempered", "fit_variance_scale", "variance_scaled", "PeftLoraModel", "train_peft_lora", "peft_predict", "tfb_posterior",
           "TFBFit", "rotate_lora", "IVON_SETTINGS", "IVON_TASKS", "ivon_optimizer", "ivon_task_settings", "ivon_predict",
           "LAPLACE_TORCH_INSTALL", "LaplaceTorchFit", "laplace_torch_fit", "laplace_torch_predict"]
