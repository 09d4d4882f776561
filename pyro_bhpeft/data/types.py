"""Task descriptions, loaded task data, the column schema of each kind, and the data error."""

from __future__ import annotations

from dataclasses import dataclass

import datasets

__all__ = ["TaskSpec", "TaskData", "DataError", "KINDS", "features_for"]

KINDS = ("classification", "multiple_choice", "regression")


class DataError(ValueError):
    """Bad or missing data. The message is one line that names the problem and the fix.

    Example::

        try:
            data = load_files("reviews.csv", text_column="review")
        except DataError as err:
            print(f"error: {err}")   # e.g. "reviews.csv has no text column 'review' (columns: ...); ..."
    """


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, its class names (classification) or number of choices (multiple choice).

    Example::

        spec = TaskSpec("reviews", "classification", label_names=("negative", "positive"))
        len(spec.label_names)   # 2 outputs for the classifier head
    """

    name: str
    kind: str  # "classification" | "multiple_choice" | "regression"
    label_names: tuple[str, ...] = ()
    num_choices: int = 0
    description: str = ""
    hub_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"task {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "multiple_choice" and self.num_choices < 2:
            raise DataError(f"task {self.name!r}: multiple choice needs num_choices >= 2, got {self.num_choices}")
        if self.kind == "classification" and len(self.label_names) < 2:
            raise DataError(f"task {self.name!r}: classification needs at least 2 label_names, "
                            f"got {list(self.label_names)}")


@dataclass(frozen=True)
class TaskData:
    """A task's splits: ``train``, ``validation``, ``test`` and any extra test splits (``sst2``).

    Columns: classification ``text`` (str) / ``label`` (int, a ``ClassLabel``); regression ``text`` /
    ``label`` (float); multiple choice ``question`` (str) / ``choices`` (``spec.num_choices`` str) /
    ``label`` (int, the index of the right choice).

    Example::

        data = load_task("r8", max_examples=100)
        data.splits["train"][0]      # {"text": "...", "label": 2}
        data.spec.label_names[2]     # "earn"
    """

    spec: TaskSpec
    splits: datasets.DatasetDict


def features_for(spec: TaskSpec) -> datasets.Features:
    """The column schema of a task's splits (classification labels carry their class names).

    Example::

        ds = datasets.Dataset.from_dict(columns, features=features_for(spec))
    """
    if spec.kind == "classification":
        return datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(spec.label_names))})
    if spec.kind == "regression":
        return datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("float64")})
    return datasets.Features({"question": datasets.Value("string"),
                              "choices": datasets.List(datasets.Value("string")),
                              "label": datasets.Value("int64")})
