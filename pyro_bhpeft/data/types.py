"""Task descriptions, loaded task data, the registry of data kinds (each kind's schema, reader and
encoder), and the data error.

``DATA_KINDS`` is declared here, empty; the built-in kinds are registered in
:mod:`pyro_bhpeft.data.kinds`, one line each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import datasets


if TYPE_CHECKING:
    from .files import UserFile

__all__ = ["TaskSpec", "TaskData", "SplitSource", "DataError", "DataKind", "DATA_KINDS", "KINDS", "features_for"]


class DataError(ValueError):
    """Bad or missing data. The message is one line that names the problem and the fix.

    Example::

        try:
            data = load_files("reviews.csv", text_column="review")
        except DataError as err:
            print(f"error: {err}")   # e.g. "reviews.csv has no text column 'review' (columns: ...); ..."
    """


def _any_spec(spec: TaskSpec) -> None:
    """The default check of a kind's TaskSpec: every spec of the kind is valid."""


def _every_row(row: dict, spec: TaskSpec) -> bool:
    """The default hub-row filter: keep every converted row."""
    return True


@dataclass(frozen=True)
class DataKind:
    """What the data layer needs for one task kind: schema, checks, how to read a user file, how to encode.

    A split of the kind has the ``inputs`` columns, then ``label``: a ``ClassLabel`` over
    ``spec.label_names`` when ``class_labels``, else a ``Value(label_dtype)``. A user file needs the
    same columns (:attr:`columns`), named through ``load_files``' ``*_column`` arguments.

    - ``read(file)``: a :class:`~pyro_bhpeft.data.files.UserFile` -> ``(spec, columns)``, the spec
      made with ``file.new_spec(...)`` for the training file (``file.spec`` is None) and the columns
      as lists in schema order; problems raise :class:`DataError`.
    - ``encoder(spec, tokenizer, settings)``: the batched ``Dataset.map`` function that adds
      ``input_ids``/``attention_mask`` (``encode_text`` or ``encode_pairs`` in ``batches.py``).
    - ``validate(spec)``: raise :class:`DataError` for a spec of this kind that cannot work.
    - ``keep_row(row, spec)``: whether a row converted from the hub fits the spec.

    Example::

        DATA_KINDS.register("ordinal", DataKind({"text": datasets.Value("string")}, "int64",
                                                read=read_ordinal, encoder=encode_text))
    """

    inputs: Mapping[str, Any]  # column -> datasets feature, in schema order
    label_dtype: str  # "int64" | "float64"
    read: Callable[[UserFile], tuple[TaskSpec, dict[str, list]]]
    encoder: Callable[[TaskSpec, Any, dict], Callable[[dict], dict]]
    class_labels: bool = False
    validate: Callable[[TaskSpec], None] = _any_spec
    keep_row: Callable[[dict, TaskSpec], bool] = _every_row

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))  # frozen all the way down

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of a split and of a user file (by role): the inputs, then ``label``."""
        return (*self.inputs, "label")

    def features(self, spec: TaskSpec) -> datasets.Features:
        label = (datasets.ClassLabel(names=list(spec.label_names)) if self.class_labels
                 else datasets.Value(self.label_dtype))
        return datasets.Features({**self.inputs, "label": label})


from ..task_kinds import DATA_KINDS  # noqa: E402  (one record per task kind: its model and its data kind)


class _KindNames(Sequence[str]):
    """The names in ``DATA_KINDS``, read live, as a sequence (so ``KINDS`` also lists plug-in kinds)."""

    def __getitem__(self, index: Any) -> Any:
        return tuple(DATA_KINDS)[index]

    def __len__(self) -> int:
        return len(DATA_KINDS)

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) and not isinstance(other, str) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(tuple(self))


KINDS: Sequence[str] = _KindNames()


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, its class names (classification) or number of choices (multiple choice).

    Example::

        spec = TaskSpec("reviews", "classification", label_names=("negative", "positive"))
        len(spec.label_names)   # 2 outputs for the classifier head
    """

    name: str
    kind: str  # a name in DATA_KINDS: "classification" | "multiple_choice" | "regression" | "answer_choice" | a plug-in
    label_names: tuple[str, ...] = ()
    num_choices: int = 0
    description: str = ""
    hub_id: str | None = None
    answer_ids: tuple[int, ...] = ()  # answer_choice: the token id of each answer (label_names) for the backbone

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise DataError(f"task {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        DATA_KINDS[self.kind].validate(self)


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
    sources: Mapping[str, SplitSource] = field(default_factory=dict)  # split -> where its rows came from
    notes: tuple[str, ...] = ()  # one-line facts to tell the user (a task kind inferred, splits held out)
    warnings: tuple[str, ...] = ()  # one-line warnings (case-variant classes, unseen or dropped labels)

    def describe_splits(self) -> list[str]:
        """One line per split whose source is known, e.g. ``validation: 10 % of train.csv (12 rows, seed 0)``."""
        return [source.describe(name) for name, source in self.sources.items()]


@dataclass(frozen=True)
class SplitSource:
    """Where one split's rows came from: a whole ``file``, or (``carved_from`` set) a seeded
    ``fraction`` of the training file held out by ``seed``.

    Example::

        data = load_files("train.csv")
        data.sources["validation"].describe("validation")  # "validation: 10 % of train.csv (12 rows, seed 0)"
    """

    file: str
    rows: int
    carved_from: str | None = None  # the split it was held out of ("train")
    fraction: float | None = None
    seed: int | None = None
    unlabelled: int = 0  # rows without a usable label (label -1, or NaN for regression)
    unseen: Mapping[str, int] = field(default_factory=dict)  # label -> rows, classes the task does not have
    dropped: int = 0  # rows dropped for an unseen class

    def describe(self, split: str) -> str:
        name = Path(self.file).name
        if self.carved_from is not None:
            share = f"{self.fraction * 100:g} % of {name}" if self.fraction is not None else f"held out of {name}"
            seed = f", seed {self.seed}" if self.seed is not None else ""
            return f"{split}: {share} ({self.rows:,} rows{seed})"
        extra = "".join([f", {self.unlabelled:,} without a label" if self.unlabelled else "",
                         f", {self.dropped:,} dropped (unseen classes)" if self.dropped else ""])
        return f"{split}: {name} ({self.rows:,} row{'s' * (self.rows != 1)}{extra})"


def features_for(spec: TaskSpec) -> datasets.Features:
    """The column schema of a task's splits (classification labels carry their class names).

    Example::

        ds = datasets.Dataset.from_dict(columns, features=features_for(spec))
    """
    return DATA_KINDS[spec.kind].features(spec)
