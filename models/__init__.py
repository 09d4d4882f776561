"""Pyro models: a frozen transformer with Bayesian PEFT layers, a random head and a likelihood."""

from .base import BayesianPeftModel
from .classifier import MultipleChoice, SequenceClassifier
from .regressor import Regressor

MODELS = {cls.__name__: cls for cls in (SequenceClassifier, MultipleChoice, Regressor)}

__all__ = ["BayesianPeftModel", "SequenceClassifier", "MultipleChoice", "Regressor", "MODELS"]
