"""Task descriptions and loaded task data."""

from __future__ import annotations

from dataclasses import dataclass

import datasets

__all__ = ["TaskSpec", "TaskData", "DataError", "KINDS"]

KINDS = ("classification", "multiple_choice", "regression")


class DataError(ValueError):
    """Bad or missing data; the message names the problem and the fix."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, class names (classification) or number of choices (multiple choice)."""

    name: str
    kind: str
    label_names: tuple[str, ...] = ()
    num_choices: int = 0
    description: str = ""
    hub_id: str | None = None


@dataclass(frozen=True)
class TaskData:
    """A task's splits: ``train``, ``validation``, ``test`` and any extra test splits (``sst2``).

    Columns: classification ``text``/``label`` (int); regression ``text``/``label`` (float);
    multiple choice ``question``/``choices`` (list of str)/``label`` (int).
    """

    spec: TaskSpec
    splits: datasets.DatasetDict
