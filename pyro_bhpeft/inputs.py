"""What the front door accepts as data and as a task, turned into the library's :class:`TaskData` / :class:`TaskSpec`.

Data: a ``TaskData``, a ``datasets.Dataset`` or ``DatasetDict``, a pandas DataFrame, a dict of columns, or
``(texts, labels)``; labels as class names (strings), class indices, or real values (regression). A task: a
``TaskData``, a ``TaskSpec``, a registered task name, ``"regression"``, ``"language-model"`` (``prompt`` and
``response`` columns: the response is the target), or ``num_labels``.
"""

from __future__ import annotations

from typing import Any, Sequence

from .config import ConfigError

__all__ = ["task_spec", "as_task_data", "is_loader", "is_texts", "unlabelled"]


def is_loader(data: Any) -> bool:
    import torch

    return isinstance(data, torch.utils.data.DataLoader)


def is_texts(data: Any) -> bool:
    return isinstance(data, (list, tuple)) and len(data) > 0 and all(isinstance(t, str) for t in data)


def unlabelled(texts: Sequence[str], spec: Any) -> dict[str, list]:
    label = 0.0 if spec.kind == "regression" else 0  # never read: predictions of texts have no labels
    return {"text": list(texts), "label": [label] * len(texts)}


def task_spec(task: Any, num_labels: int | None):
    """A TaskSpec from what the user said about the task (None: read it from the first data)."""
    from .data import TASKS, TaskData, TaskSpec

    if isinstance(task, TaskData):
        return task.spec
    if isinstance(task, TaskSpec):
        return task
    if task == "regression":
        return TaskSpec("regression", "regression")
    if task == "language-model":
        return TaskSpec("language-model", "language_model")
    if isinstance(task, str):
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}, or pass num_labels=")
        return TASKS[task]
    if task is not None:
        raise ConfigError(f"task must be a TaskData, a TaskSpec, a registered task name or 'regression', got {task!r}")
    if num_labels is not None:
        return TaskSpec("classification", "classification", label_names=tuple(str(i) for i in range(int(num_labels))))
    return None


def _columns(data: Any) -> dict[str, list]:
    """``data`` as a dict of columns (text/label, or question/choices/label)."""
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], str):
        return {"text": list(data[0]), "label": list(data[1])}
    if isinstance(data, dict):
        return {k: list(v) for k, v in data.items()}
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        return {str(c): data[c].tolist() for c in data.columns}
    if hasattr(data, "column_names") and hasattr(data, "to_dict"):  # a datasets.Dataset
        return data.to_dict()
    raise ConfigError(f"cannot read data of type {type(data).__name__}; pass a TaskData, a datasets.Dataset or "
                      "DatasetDict, a pandas DataFrame, a dict of columns or (texts, labels)")


def _infer_spec(labels: list) -> Any:
    from .data import TaskSpec

    if all(isinstance(y, str) for y in labels):
        return TaskSpec("classification", "classification", label_names=tuple(sorted(set(labels))))
    if all(isinstance(y, int) or float(y).is_integer() for y in labels):
        return TaskSpec("classification", "classification",
                        label_names=tuple(str(i) for i in range(int(max(labels)) + 1)))
    return TaskSpec("regression", "regression")


def as_task_data(data: Any, spec: Any, *, split: str = "train"):
    """``data`` as a :class:`TaskData` of ``spec`` (inferred from the labels when None), in split ``split``."""
    import datasets

    from .data import TaskData, TaskSpec
    from .data.types import features_for

    if isinstance(data, TaskData):
        return data
    if isinstance(data, datasets.DatasetDict):
        splits = {name: _columns(part) for name, part in data.items()}
    else:
        splits = {split: _columns(data)}
    first = next(iter(splits.values()))
    if (spec is None or spec.kind == "language_model") and {"prompt", "response"} <= set(first):
        spec = spec or TaskSpec("language-model", "language_model")
        splits = {name: {**cols, "label": [0] * len(cols["prompt"])} for name, cols in splits.items()}
        first = next(iter(splits.values()))
    if "label" not in first:
        raise ConfigError(f"the data has no 'label' column (columns: {', '.join(first)}); rename the target column")
    spec = spec or _infer_spec(first["label"])
    names = list(spec.label_names)
    out = datasets.DatasetDict()
    for name, columns in splits.items():
        if spec.kind != "regression" and names and any(isinstance(y, str) for y in columns["label"]):
            unseen = sorted({y for y in columns["label"] if y not in names})
            if unseen:
                raise ConfigError(f"labels {unseen[:5]} are not among the task's classes {names[:10]}")
            columns = {**columns, "label": [names.index(y) for y in columns["label"]]}
        kept = {k: columns[k] for k in features_for(spec)}
        out[name] = datasets.Dataset.from_dict(kept, features=features_for(spec))
    return TaskData(spec, out)
