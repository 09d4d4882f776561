"""The built-in data kinds: ``classification``, ``multiple_choice``, ``regression``, ``answer_choice``
(multiple choice scored by a causal LM's answer tokens, see :mod:`pyro_bhpeft.data.prompts`) and the cloze
kinds (scored by each choice's likelihood, :mod:`pyro_bhpeft.data.cloze`), one line each.

A new kind is one more line (here, or in your own code before building a TaskSpec of the kind)::

    from pyro_bhpeft.data.types import DATA_KINDS, DataKind
    DATA_KINDS.register("ordinal", DataKind({"text": TEXT}, "int64", read=read_ordinal, encoder=encode_text))

and a model for it in ``TASK_KINDS`` (``pyro_bhpeft.models``) to fit it.
"""

from __future__ import annotations

import datasets

from .batches import encode_pairs, encode_text
from .cloze import CLOZE_KINDS, encode_cloze
from .files import read_choices, read_classes, read_numbers, read_responses
from .prompts import check_answer_spec, encode_prompts
from .responses import encode_responses
from .types import DATA_KINDS, DataError, DataKind, TaskSpec

__all__ = ["TEXT", "CHOICES"]

TEXT = datasets.Value("string")
CHOICES = datasets.List(datasets.Value("string"))


def _two_classes(spec: TaskSpec) -> None:
    if len(spec.label_names) < 2:
        raise DataError(f"task {spec.name!r}: classification needs at least 2 label_names, "
                        f"got {list(spec.label_names)}")


def _two_choices(spec: TaskSpec) -> None:
    if spec.num_choices < 2:
        raise DataError(f"task {spec.name!r}: multiple choice needs num_choices >= 2, got {spec.num_choices}")


def _has_num_choices(row: dict, spec: TaskSpec) -> bool:
    """A hub row fits a multiple-choice task when it has the task's number of choices."""
    return len(row["choices"]) == spec.num_choices


DATA_KINDS.register("classification", DataKind({"text": TEXT}, "int64", read=read_classes, encoder=encode_text,
                                               class_labels=True, validate=_two_classes))
DATA_KINDS.register("multiple_choice", DataKind({"question": TEXT, "choices": CHOICES}, "int64", read=read_choices,
                                                encoder=encode_pairs, validate=_two_choices,
                                                keep_row=_has_num_choices))
DATA_KINDS.register("regression", DataKind({"text": TEXT}, "float64", read=read_numbers, encoder=encode_text))
DATA_KINDS.register("answer_choice", DataKind({"question": TEXT, "choices": CHOICES}, "int64", read=read_choices,
                                              encoder=encode_prompts, validate=check_answer_spec,
                                              keep_row=_has_num_choices))
for _kind in CLOZE_KINDS.values():  # multiple choice scored by each choice's likelihood under a causal LM
    DATA_KINDS.register(_kind, DataKind({"question": TEXT, "choices": CHOICES}, "int64", read=read_choices,
                                        encoder=encode_cloze, validate=_two_choices, keep_row=_has_num_choices))
DATA_KINDS.register("language_model", DataKind({"prompt": TEXT, "response": TEXT}, "int64", read=read_responses,
                                               encoder=encode_responses))  # label unused: the response is the target
