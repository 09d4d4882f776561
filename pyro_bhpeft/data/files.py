"""The user's own data: CSV, JSON Lines (or a JSON array) or Parquet files with named columns, validated.

Every problem is a one-line :class:`DataError` naming the file, the column or row, and the fix
(the CLI flags that set column names are named: ``--text-column`` and friends).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .splits import carve
from .types import DATA_KINDS, KINDS, DataError, TaskData, TaskSpec, features_for

__all__ = ["load_files", "read_table", "UserFile", "read_classes", "read_numbers", "read_choices", "SUFFIXES"]

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
FLAGS = {"text": "--text-column", "label": "--label-column", "question": "--question-column",
         "choices": "--choices-column"}


def read_table(path: str | Path):
    """A pandas DataFrame from a ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file, or a :class:`DataError`.

    Example::

        df = read_table("reviews.csv")
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found; check the path")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path.name}: unsupported file type {path.suffix or '(none)'!r}; "
                        f"use one of {', '.join(SUFFIXES)}")
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    if not head:
        raise DataError(f"{path} is empty; it needs a header (or keys) and at least one row")
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:  # JSON Lines, or a .json file holding one array of records
            df = pd.read_json(path, lines=not (suffix == ".json" and head.startswith(b"[")), orient="records")
    except (ValueError, OSError) as err:  # parser, decoding and Arrow errors are ValueErrors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path.name} could not be read as {suffix[1:]} ({reason}); check the file's format") from None
    if len(df) == 0:
        raise DataError(f"{path} has no rows; it needs at least one labelled example")
    return df


def _column(df, column: str, role: str, path: Path) -> list:
    if column not in df.columns:
        raise DataError(f"{path.name} has no {role} column {column!r} (columns: {', '.join(map(str, df.columns))}); "
                        f"name the right one with {FLAGS[role]}")
    return df[column].tolist()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _texts(df, column: str, role: str, path: Path) -> list[str]:
    values = _column(df, column, role, path)
    for row, v in enumerate(values, start=1):
        if _missing(v) or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{path.name}: row {row} has no text in column {column!r}; fill or remove that row")
        if not isinstance(v, str):
            raise DataError(f"{path.name}: column {column!r} must hold text, but row {row} holds "
                            f"{type(v).__name__} {v!r}; point {FLAGS[role]} at the text column")
    return values


def _numbers(values: list, column: str, path: Path, what: str) -> list[float]:
    out = []
    for row, v in enumerate(values, start=1):
        try:
            number = float(v)
        except (TypeError, ValueError):
            number = math.nan
        if math.isnan(number) or isinstance(v, bool):
            raise DataError(f"{path.name}: {what} in column {column!r} must be numbers, row {row} holds {v!r}; "
                            f"fix the row or point --label-column at the right column")
        out.append(number)
    return out


def _label_key(v: Any) -> str:
    """The class name a label value stands for: ``1``, ``1.0`` and ``"1"`` are all ``"1"``."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _class_names(values: list, column: str, path: Path) -> tuple[str, ...]:
    """The sorted distinct labels of the training file (numerically when they are all numbers)."""
    keys = {_label_key(v) for v in values if not _missing(v)}
    try:
        names = tuple(sorted(keys, key=float))
    except ValueError:
        names = tuple(sorted(keys))
    if len(names) < 2:
        raise DataError(f"{path.name}: column {column!r} holds only the class {list(names)}; classification needs "
                        "at least two classes (or use kind='regression' / --kind regression)")
    return names


def _class_ids(values: list, names: Sequence[str], column: str, path: Path) -> list[int]:
    index = {str(n): i for i, n in enumerate(names)}
    ids_allowed = not any(n.lstrip("-").replace(".", "", 1).isdigit() for n in index)  # names are words
    out = []
    for row, v in enumerate(values, start=1):
        if _missing(v):
            raise DataError(f"{path.name}: row {row} has no label in column {column!r}; fill or remove that row")
        key = _label_key(v)
        if key in index:
            out.append(index[key])
        elif ids_allowed and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
            out.append(v)  # an integer class id, with the names given separately
        else:
            raise DataError(f"{path.name}: label {v!r} (row {row}, column {column!r}) is not one of the classes "
                            f"{list(index)}; fix the row, or train on data that has this class")
    return out


def _choices(df, column: str, path: Path) -> list[list[str]]:
    out = []
    for row, v in enumerate(_column(df, column, "choices", path), start=1):
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__") or len(v) < 2:
            raise DataError(f"{path.name}: column {column!r} must hold a list of at least two choices per row, "
                            f"row {row} holds {v!r}; in CSV write it as a JSON list such as [\"yes\", \"no\"]")
        out.append([str(c) for c in v])
    return out


@dataclass(frozen=True)
class UserFile:
    """One user file as a data kind's ``read`` sees it: the table, and the file's column for each role.

    ``spec`` is None for the training file (the reader then makes it with :meth:`new_spec`) and the
    training file's spec for the evaluation files. The helpers raise the usual one-line DataErrors.

    Example (a reader for a kind whose labels are numbers)::

        def read_scores(file: UserFile) -> tuple[TaskSpec, dict[str, list]]:
            texts, labels = file.texts("text"), file.numbers("label", "scores")
            return file.spec or file.new_spec(), {"text": texts, "label": labels}
    """

    table: Any  # a pandas DataFrame
    path: Path
    kind: str
    columns: Mapping[str, str]  # role ("text", "label", ...) -> the file's column name
    spec: TaskSpec | None = None
    label_names: Sequence[str] | None = None

    def new_spec(self, **fields: Any) -> TaskSpec:
        """The training file's TaskSpec: named after the file, of this kind, with ``fields``."""
        return TaskSpec(self.path.stem, self.kind, description=f"user files ({self.path.name})", **fields)

    def column(self, role: str) -> list:
        return _column(self.table, self.columns[role], role, self.path)

    def texts(self, role: str) -> list[str]:
        return _texts(self.table, self.columns[role], role, self.path)

    def numbers(self, role: str, what: str) -> list[float]:
        return _numbers(self.column(role), self.columns[role], self.path, what)


def read_classes(file: UserFile) -> tuple[TaskSpec, dict[str, list]]:
    """``text`` and class ``label`` (names, or ids with ``label_names``); the training file fixes the classes."""
    texts, labels = file.texts("text"), file.column("label")
    spec = file.spec
    if spec is None:
        names = (tuple(map(str, file.label_names)) if file.label_names
                 else _class_names(labels, file.columns["label"], file.path))
        spec = file.new_spec(label_names=names)
    return spec, {"text": texts, "label": _class_ids(labels, spec.label_names, file.columns["label"], file.path)}


def read_numbers(file: UserFile) -> tuple[TaskSpec, dict[str, list]]:
    """``text`` and a number ``label`` (regression)."""
    texts, labels = file.texts("text"), file.column("label")
    spec = file.spec or file.new_spec()
    return spec, {"text": texts, "label": _numbers(labels, file.columns["label"], file.path, "regression labels")}


def read_choices(file: UserFile) -> tuple[TaskSpec, dict[str, list]]:
    """``question``, ``choices`` (the same number per row; the training file fixes it) and a 0-based ``label``."""
    path, cols = file.path, file.columns
    questions = file.texts("question")
    choices = _choices(file.table, cols["choices"], path)
    n = file.spec.num_choices if file.spec else len(choices[0])
    for row, c in enumerate(choices, start=1):
        if len(c) != n:
            raise DataError(f"{path.name}: row {row} has {len(c)} choices, earlier rows {n}; every row needs the "
                            "same number of choices (split the file by number of choices)")
    labels = file.numbers("label", "answer indices")
    for row, y in enumerate(labels, start=1):
        if not y.is_integer() or not 0 <= y < n:
            raise DataError(f"{path.name}: label {y:g} (row {row}, column {cols['label']!r}) is not a choice index "
                            f"0..{n - 1}; labels are 0-based indices into the choices")
    spec = file.spec or file.new_spec(num_choices=n)
    return spec, {"question": questions, "choices": choices, "label": [int(y) for y in labels]}


def _read(path: Path, spec: TaskSpec | None, kind: str, cols: dict[str, str],
          label_names: Sequence[str] | None) -> tuple[TaskSpec, datasets.Dataset]:
    """One file as a Dataset in our columns; the first file (``spec`` None) also fixes the spec."""
    data_kind = DATA_KINDS[kind]
    file = UserFile(read_table(path), path, kind, {role: cols[role] for role in data_kind.columns}, spec, label_names)
    spec, columns = data_kind.read(file)
    return spec, datasets.Dataset.from_dict(columns, features=features_for(spec))


def load_files(train: str | Path, *, eval_files: dict[str, str | Path] | None = None, kind: str = "classification",
               text_column: str = "text", label_column: str = "label", question_column: str = "question",
               choices_column: str = "choices", label_names: Sequence[str] | None = None,
               validation_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """A :class:`TaskData` from the user's files (``.csv``, ``.jsonl``/``.json``, ``.parquet``).

    ``eval_files`` maps split names (``validation``, ``test``, or any extra name) to files; a missing
    ``validation`` or ``test`` is carved from train (``validation_fraction`` of it each, by ``seed``).
    Classification labels are class names (ids follow ``label_names``, or the sorted distinct training
    labels, numerically sorted when they are numbers) or integer ids with ``label_names`` given.
    Multiple choice: ``choices`` holds a list per row (a JSON list in CSV), ``label`` a 0-based index.

    Example::

        data = load_files("reviews.csv", text_column="review", label_column="stars",
                          eval_files={"test": "held_out.jsonl"})
        data.spec.label_names      # ("1", "2", "3", "4", "5")
    """
    if kind not in DATA_KINDS:
        raise DataError(f"unknown task kind {kind!r}; use one of {', '.join(KINDS)} (--kind)")
    if not 0 < validation_fraction < 0.5:
        raise DataError(f"validation_fraction must be between 0 and 0.5, got {validation_fraction}")
    if "train" in (eval_files or {}):
        raise DataError("eval_files cannot have a 'train' entry; pass the training file as `train`")
    cols = {"text": text_column, "label": label_column, "question": question_column, "choices": choices_column}
    spec, train_ds = _read(Path(train), None, kind, cols, label_names)
    splits = {"train": train_ds}
    for split, path in (eval_files or {}).items():
        splits[split] = _read(Path(path), spec, kind, cols, label_names)[1]
    missing = {s: validation_fraction for s in ("validation", "test") if s not in splits}
    if missing:
        splits.update(carve(splits.pop("train"), missing, seed, what=Path(train).name))
    order = ["train", "validation", "test"]
    return TaskData(spec, datasets.DatasetDict({k: splits[k] for k in order + [s for s in splits if s not in order]}))
