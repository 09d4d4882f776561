"""The user's own data: CSV, JSON Lines or Parquet files with named columns, validated."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import datasets

from .types import KINDS, DataError, TaskData, TaskSpec

__all__ = ["load_files", "read_table"]

READERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_table(path: str | Path):
    """A pandas DataFrame from a .csv, .jsonl/.json or .parquet file, or a DataError."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found; check the path")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path.name}: unsupported file type {path.suffix!r}; use .csv, .jsonl or .parquet")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; it needs a header and at least one row")
    try:
        df = {"csv": pd.read_csv, "parquet": pd.read_parquet}.get(kind, lambda p: pd.read_json(p, lines=True))(path)
    except ValueError as err:
        raise DataError(f"{path} could not be read as {kind} ({err}); check the file's format") from None
    if len(df) == 0:
        raise DataError(f"{path} has no rows; it needs at least one labelled example")
    return df


def _need(df, column: str, flag: str, path) -> None:
    if column not in df.columns:
        raise DataError(f"{Path(path).name} has no column {column!r} (columns: {', '.join(map(str, df.columns))}); "
                        f"name the right one with {flag}")


def _texts(df, column: str, flag: str, path) -> list[str]:
    _need(df, column, flag, path)
    values = df[column].tolist()
    bad = next((v for v in values if not isinstance(v, str)), None)
    if bad is not None and not (isinstance(bad, float) and math.isnan(bad)):
        raise DataError(f"{Path(path).name}: column {column!r} must hold text, found {type(bad).__name__} {bad!r}; "
                        f"point {flag} at the text column")
    return ["" if not isinstance(v, str) else v for v in values]


def _labels(df, column: str, kind: str, names: Sequence[str] | None, path) -> list:
    _need(df, column, "--label-column", path)
    values = df[column].tolist()
    if kind == "regression":
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError):
            raise DataError(f"{Path(path).name}: regression labels in {column!r} must be numbers") from None
    if names is None:
        return values
    index = {str(n): i for i, n in enumerate(names)}
    out = []
    for v in values:
        key = str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v)
        if key in index:
            out.append(index[key])
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= int(v) < len(names) and key not in index \
                and all(not str(n).lstrip("-").isdigit() for n in names):
            out.append(int(v))
        else:
            raise DataError(f"{Path(path).name}: label {v!r} in {column!r} is not one of the classes "
                            f"{list(map(str, names))}; fix the row or train on data that has this class")
    return out


def _frame_rows(path, kind, text_column, label_column, question_column, choices_column, names):
    df = read_table(path)
    if kind == "multiple_choice":
        questions = _texts(df, question_column, "--question-column", path)
        _need(df, choices_column, "--choices-column", path)
        choices = [list(map(str, c)) for c in df[choices_column].tolist()]
        labels = [int(v) for v in _labels(df, label_column, "regression", None, path)]
        return {"question": questions, "choices": choices, "label": labels}
    texts = _texts(df, text_column, "--text-column", path)
    return {"text": texts, "label": _labels(df, label_column, kind, names, path)}


def load_files(train: str | Path, *, eval_files: dict[str, str | Path] | None = None, kind: str = "classification",
               text_column: str = "text", label_column: str = "label", question_column: str = "question",
               choices_column: str = "choices", label_names: Sequence[str] | None = None,
               validation_fraction: float = 0.1, seed: int = 0) -> TaskData:
    """A :class:`TaskData` from the user's files; without ``eval_files``, validation and test are split off."""
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    cols = (text_column, label_column, question_column, choices_column)
    rows = _frame_rows(train, kind, *cols, label_names)
    if kind == "classification" and label_names is None:
        label_names = sorted({str(v) for v in rows["label"]})
        rows = _frame_rows(train, kind, *cols, label_names)
    splits = {"train": datasets.Dataset.from_dict(rows)}
    for split, path in (eval_files or {}).items():
        splits[split] = datasets.Dataset.from_dict(_frame_rows(path, kind, *cols, label_names))
    splits = datasets.DatasetDict(splits)
    if "validation" not in splits or "test" not in splits:
        missing = [s for s in ("validation", "test") if s not in splits]
        parts = splits["train"].train_test_split(test_size=validation_fraction * len(missing), seed=seed)
        splits["train"] = parts["train"]
        if len(missing) == 2:
            halves = parts["test"].train_test_split(test_size=0.5, seed=seed)
            splits["validation"], splits["test"] = halves["train"], halves["test"]
        else:
            splits[missing[0]] = parts["test"]
    num_choices = len(rows["choices"][0]) if kind == "multiple_choice" else 0
    spec = TaskSpec(Path(train).stem, kind, tuple(label_names or ()), num_choices, f"user files ({Path(train).name})")
    return TaskData(spec, splits)
