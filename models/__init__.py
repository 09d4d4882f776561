"""Pyro models: a frozen transformer with Bayesian PEFT layers, a random head and a likelihood.

``TASK_KINDS`` maps a task kind to the model class that serves it (the ``model`` of the kind's one record,
:data:`pyro_bhpeft.task_kinds.TASK_KIND_RECORDS`, whose ``data`` the data layer fills); a new kind is a model
class (a :class:`BayesianPeftModel` subclass with ``task`` and ``for_task``) plus one line,
``TASK_KINDS.register("my-kind", MyModel)``.
"""

from pyro_bhpeft.task_kinds import TASK_KINDS

from .answer import AnswerChoice
from .base import BayesianPeftModel
from .classifier import MultipleChoice, SequenceClassifier
from .cloze import ClozeChoice, ClozeChoiceMean
from .lm import LanguageModel
from .regressor import Regressor

for _model in (SequenceClassifier, MultipleChoice, Regressor, AnswerChoice, ClozeChoice, ClozeChoiceMean,
               LanguageModel):
    TASK_KINDS.register(_model.task, _model)


def model_class(name: str) -> type[BayesianPeftModel]:
    """The registered model class called ``name`` (as saved in a run's config.json)."""
    classes = {cls.__name__: cls for cls in TASK_KINDS.values()}
    if name not in classes:
        raise ValueError(f"unknown model class {name!r} in the saved run; known: {', '.join(classes)}")
    return classes[name]


__all__ = ["BayesianPeftModel", "SequenceClassifier", "MultipleChoice", "Regressor", "AnswerChoice", "ClozeChoice",
           "ClozeChoiceMean", "LanguageModel", "TASK_KINDS", "model_class"]
