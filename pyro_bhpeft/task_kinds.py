"""Task kinds, one record each: the model class that serves the kind and the data kind that reads it.

Two views fill and read the records: :data:`pyro_bhpeft.models.TASK_KINDS` (kind -> model class) and
:data:`pyro_bhpeft.data.DATA_KINDS` (kind -> schema, reader and encoder). This module is import-light (no
torch, no datasets), so both the models and the data layer can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import RecordView, Registry

__all__ = ["TaskKind", "TASK_KIND_RECORDS", "TASK_KINDS", "DATA_KINDS"]


@dataclass(frozen=True)
class TaskKind:
    """A task kind: ``model``, the :class:`~pyro_bhpeft.models.BayesianPeftModel` subclass that serves it, and
    ``data``, its :class:`~pyro_bhpeft.data.DataKind` (a kind the data layer does not read has None there)."""

    model: type | None = None
    data: Any = None


TASK_KIND_RECORDS: Registry[TaskKind] = Registry("task kind")
TASK_KINDS = RecordView(TASK_KIND_RECORDS, "model", TaskKind)  # kind -> model class (pyro_bhpeft.models)
DATA_KINDS = RecordView(TASK_KIND_RECORDS, "data", TaskKind)  # kind -> DataKind (pyro_bhpeft.data)
