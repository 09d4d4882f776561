"""The user's own data: CSV/TSV (delimiter sniffed), JSON Lines (or a JSON array) or Parquet files with
named columns, validated: :func:`load_files` for training (and its evaluation files), :func:`load_eval_file`
for a file scored or predicted by a fitted run.

Every problem is a one-line :class:`DataError` naming the file, the column or row, and the fix
(the CLI flags that set column names are named: ``--text-column`` and friends). What the user should
know but is not an error comes back in one-line ``notes`` and ``warnings`` on the :class:`TaskData`
(the task kind inferred, splits held out of the training file, case-variant or unseen classes).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .labels import case_variants, class_id, ids_allowed, infer_kind, label_key, missing, numeric_classes, screen_labels
from .splits import carve
from .tables import SUFFIXES, delimiter_ignored, read_table, wrong_delimiter_hint
from .types import DATA_KINDS, KINDS, DataError, SplitSource, TaskData, TaskSpec, features_for

__all__ = ["load_files", "load_eval_file", "read_table", "UserFile", "read_classes", "read_numbers", "read_choices", "read_responses",
           "SUFFIXES"]

FLAGS = {"text": "--text-column", "label": "--label-column", "question": "--question-column",
         "choices": "--choices-column", "prompt": "--prompt-column", "response": "--response-column"}


def _column(df, column: str, role: str, path: Path) -> list:
    if column not in df.columns:
        hint = wrong_delimiter_hint(df.columns)
        raise DataError(f"{path.name} has no {role} column {column!r} (columns: {', '.join(map(str, df.columns))})"
                        + (hint or f"; name the right one with {FLAGS[role]}"))
    return df[column].tolist()


def _texts(df, column: str, role: str, path: Path, written: bool = False) -> list[str]:
    values = as_written(df, column, role, path) if written else _column(df, column, role, path)
    for row, v in enumerate(values, start=1):
        if missing(v) or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{path.name}: row {row} has no text in column {column!r}; fill or remove that row")
        if not isinstance(v, str):
            raise DataError(f"{path.name}: column {column!r} must hold text, but row {row} holds "
                            f"{type(v).__name__} {v!r}; point {FLAGS[role]} at the text column")
    return values


def as_written(table: Any, column: str, role: str, path: Path) -> list:
    """A text column's values as the file wrote them. A delimited file's column is re-read as text wherever its
    reader parsed something: a number (an answer "4", "007" or "3.50") or a word it takes for missing ("None",
    "NA", "null"); only an empty cell stays missing. In JSON a number becomes its text as Python writes it (4 and
    4.0 as "4", 3.50 as "3.5": JSON keeps no trailing zeros)."""
    values = _column(table, column, role, path)
    if all(isinstance(v, str) for v in values):
        return values
    if "delimiter" in table.attrs:
        stat = path.stat()
        raw = _as_text(str(path), stat.st_mtime_ns, stat.st_size, table.attrs["delimiter"])[column]
        return [raw.loc[i] if raw.loc[i] != "" else None for i in table.index]

    def text(v: Any) -> Any:
        if isinstance(v, bool) or missing(v) or not isinstance(v, (int, float)):
            return v
        return str(int(v)) if float(v).is_integer() else str(v)

    return [text(v) for v in values]


@functools.lru_cache(maxsize=1)
def _as_text(path: str, mtime_ns: int, size: int, delimiter: str) -> Any:
    """A delimited file read once with every cell as its text (a file's prompts and its responses both re-read
    from one read; keyed by the file's modification time and size, so an edited file is read afresh)."""
    import pandas as pd

    return pd.read_csv(path, sep=delimiter, encoding="utf-8-sig", dtype=str, keep_default_na=False)


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


def _class_names(values: list, column: str, path: Path) -> tuple[str, ...]:
    """The sorted distinct labels of the training file (numerically when they are all numbers)."""
    keys = {label_key(v) for v in values if not missing(v)}
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
    allowed = ids_allowed(names)  # integer labels may be class ids when the names are words
    out = []
    for row, v in enumerate(values, start=1):
        if missing(v):
            raise DataError(f"{path.name}: row {row} has no label in column {column!r}; fill or remove that row")
        cid = class_id(v, index, allowed)
        if cid is None:
            raise DataError(f"{path.name}: label {v!r} (row {row}, column {column!r}) is not one of the classes "
                            f"{list(index)}; fix the row, or train on data that has this class")
        out.append(cid)
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

    def texts(self, role: str, written: bool = False) -> list[str]:
        """The role's texts; ``written``: numbers as the file wrote them (an answer "4"), else a number is an error."""
        return _texts(self.table, self.columns[role], role, self.path, written)

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


def read_responses(file: UserFile) -> tuple[TaskSpec, dict[str, list]]:
    """``prompt`` and ``response`` texts (a language-model task: the response's tokens are the target)."""
    prompts, responses = file.texts("prompt", written=True), file.texts("response", written=True)
    return file.spec or file.new_spec(), {"prompt": prompts, "response": responses, "label": [0] * len(prompts)}


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


def _read(path: Path, table: Any, spec: TaskSpec | None, kind: str, cols: Mapping[str, str],
          label_names: Sequence[str] | None) -> tuple[TaskSpec, datasets.Dataset]:
    """One table as a Dataset in our columns; the first file (``spec`` None) also fixes the spec."""
    data_kind = DATA_KINDS[kind]
    file = UserFile(table, path, kind, {role: cols[role] for role in data_kind.columns}, spec, label_names)
    spec, columns = data_kind.read(file)
    return spec, datasets.Dataset.from_dict(columns, features=features_for(spec))


def _class_warnings(spec: TaskSpec, table: Any, column: str) -> list[str]:
    """Warnings about a classification training file's classes: case variants, real numbers as classes."""
    if not DATA_KINDS[spec.kind].class_labels or column not in table.columns:
        return []
    lines = [case_variants(spec.label_names, table[column].tolist(), column), numeric_classes(spec.label_names, column)]
    return [line for line in lines if line]


def _carved(splits: dict, fractions: dict[str, float], seed: int, train: Path) -> tuple[dict, str]:
    """Carve the missing evaluation splits out of train; the note that says so."""
    splits.update(carve(splits.pop("train"), fractions, seed, what=train.name))
    held = ", ".join(f"{name} {len(splits[name]):,}" for name in fractions)
    hint = " (pass --eval FILE to evaluate on a file of your own)" if "test" in fractions else ""
    note = (f"held out of {train.name} by seed {seed}: {held} rows ({sum(fractions.values()) * 100:g} %); "
            f"training on the other {len(splits['train']):,}{hint}")
    return splits, note


def load_files(train: str | Path, *, eval_files: dict[str, str | Path] | None = None, kind: str | None = None,
               text_column: str = "text", label_column: str = "label", question_column: str = "question",
               choices_column: str = "choices", prompt_column: str = "prompt", response_column: str = "response",
               label_names: Sequence[str] | None = None, validation_fraction: float = 0.1, seed: int = 0,
               delimiter: str | None = None, drop_unseen: bool = False) -> TaskData:
    """A :class:`TaskData` from the user's files (``.csv``/``.tsv``/``.txt``, ``.jsonl``/``.json``, ``.parquet``).

    ``kind`` None infers it from the training file (:func:`~pyro_bhpeft.data.labels.infer_kind`: a
    real-valued label column is regression, words or a few whole numbers are classes, question and
    choices columns without a text column are multiple choice, prompt and response columns a language-model
    task) and says so in ``notes``.
    ``eval_files`` maps split names (``validation``, ``test``, or any extra name) to files; a missing
    ``validation`` or ``test`` is carved from train (``validation_fraction`` of it each, by ``seed``),
    said in ``notes`` and in ``sources``. Classification labels are class names (ids follow
    ``label_names``, or the sorted distinct training labels, numerically sorted when they are numbers)
    or integer ids with ``label_names`` given; names differing only in case stay separate classes and
    get a line in ``warnings``. An evaluation file's class the training file lacks is an error naming
    it and its rows, unless ``drop_unseen``. Multiple choice: ``choices`` holds a list per row (a JSON
    list in CSV), ``label`` a 0-based index. ``delimiter`` (delimited text files): the column delimiter,
    sniffed when None.

    Example::

        data = load_files("reviews.csv", text_column="review", label_column="stars",
                          eval_files={"test": "held_out.jsonl"})
        data.spec.label_names      # ("1", "2", "3", "4", "5")
        data.notes                 # ("task kind: classification, inferred from column 'stars' (5 classes); ...", ...)
    """
    if kind is not None and kind not in DATA_KINDS:
        raise DataError(f"unknown task kind {kind!r}; use one of {', '.join(KINDS)} (--kind)")
    if not 0 < validation_fraction < 0.5:
        raise DataError(f"validation_fraction must be between 0 and 0.5, got {validation_fraction}")
    if "train" in (eval_files or {}):
        raise DataError("eval_files cannot have a 'train' entry; pass the training file as `train`")
    cols = {"text": text_column, "label": label_column, "question": question_column, "choices": choices_column,
            "prompt": prompt_column, "response": response_column}
    train, table = Path(train), read_table(train, delimiter=delimiter)
    notes = [line for line in [delimiter_ignored(train, delimiter)] if line]
    if kind is None and label_names:
        kind = "classification"  # class names given: the labels are classes
    if kind is None:
        kind, note = infer_kind(table, cols)
        notes += [note] if note else []
    spec, train_ds = _read(train, table, None, kind, cols, label_names)
    warnings = _class_warnings(spec, table, label_column)
    splits, sources = {"train": train_ds}, {}
    for split, path in (eval_files or {}).items():
        part = load_eval_file(path, spec, columns=cols, drop_unseen=drop_unseen, delimiter=delimiter, split=split)
        splits[split], sources[split] = part.splits[split], part.sources[split]
        notes += [n for n in part.notes if n not in notes]
        warnings += part.warnings
    fractions = {s: validation_fraction for s in ("validation", "test") if s not in splits}
    if fractions:
        splits, note = _carved(splits, fractions, seed, train)
        notes.append(note)
        sources.update({s: SplitSource(str(train), len(splits[s]), "train", validation_fraction, seed)
                        for s in fractions})
    sources["train"] = SplitSource(str(train), len(splits["train"]))
    order = ["train", "validation", "test"]
    names = order + [s for s in splits if s not in order]
    return TaskData(spec, datasets.DatasetDict({k: splits[k] for k in names}), {k: sources[k] for k in names},
                    tuple(notes), tuple(warnings))


def _roles(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Column names by role from ``{"text": ...}`` or load_files' ``{"text_column": ...}`` keys (None: the role)."""
    out = {role: role for role in FLAGS}
    for key, value in (columns or {}).items():
        role = key.removesuffix("_column")
        if value is not None:
            out[role] = value
    return out


def _prompt_file(path: Path, table: Any, spec: TaskSpec, cols: dict[str, str], require_responses: bool,
                 delimiter: str | None, split: str) -> TaskData:
    """A language-model file: prompts and responses (the target; with ``require_responses`` every row needs one,
    without it the column may be absent and its empty rows are ``None``: prompts to answer, unscored)."""
    notes = [line for line in [delimiter_ignored(path, delimiter)] if line]
    if require_responses:
        _, ds = _read(path, table, spec, spec.kind, cols, None)
        return TaskData(spec, datasets.DatasetDict({split: ds}), {split: SplitSource(str(path), len(ds))},
                        tuple(notes), ())
    rows, column = {"prompt": _texts(table, cols["prompt"], "prompt", path, written=True)}, cols["response"]
    if column in table.columns:
        rows["response"] = [r if isinstance(r, str) and r.strip() else None
                            for r in as_written(table, column, "response", path)]
    else:
        notes.insert(0, f"{path.name}: no response column {column!r}; the answers are not scored (name the gold "
                        "answers' column with --response-column to score them)")
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({k: datasets.Value("string") for k in rows}))
    return TaskData(spec, datasets.DatasetDict({split: ds}), {split: SplitSource(str(path), len(ds))},
                    tuple(notes), ())


def load_eval_file(path: str | Path, spec: TaskSpec, *, columns: Mapping[str, str | None] | None = None,
                   require_labels: bool = True, drop_unseen: bool = False, delimiter: str | None = None,
                   split: str = "test") -> TaskData:
    """One file to score (``require_labels``) or predict (not) with a model fitted on task ``spec``,
    as a :class:`TaskData` with the one split ``split``.

    ``columns`` names the file's columns by role (``{"text": "review"}``) or by ``load_files``' argument
    names (``{"text_column": "review"}``); unnamed roles use the role's name. Without
    ``require_labels`` the label column may be absent (the split then has no ``label`` column; batches
    are ``(inputs, None)``), and rows with an empty label or a class the task lacks are kept with label
    -1 (NaN for regression), reported in ``warnings`` and ``sources[split]``. With ``require_labels``
    an unseen class is an error naming each class and its row count, unless ``drop_unseen`` (those
    rows are dropped, and a warning says so).

    Example::

        texts = load_eval_file("new_reviews.csv", run_spec, columns={"text": "review"}, require_labels=False)
        texts.splits["test"].column_names    # ["text"]: no label column in the file
    """
    path, cols = Path(path), _roles(columns)
    table, kind = read_table(path, delimiter=delimiter), DATA_KINDS[spec.kind]
    cols = {role: cols.get(role, role) for role in kind.columns}
    if spec.kind == "language_model":
        return _prompt_file(path, table, spec, cols, require_labels, delimiter, split)
    if cols["label"] not in table.columns and require_labels:
        raise DataError(f"{path.name} has no label column {cols['label']!r} (columns: "
                        f"{', '.join(map(str, table.columns))}){wrong_delimiter_hint(table.columns)}; scoring needs "
                        "the labels: name the column with --label-column (predict works on text alone)")
    has_labels = cols["label"] in table.columns
    screened, warnings = screen_labels(table, path, spec, cols["label"], require_labels=require_labels,
                                       drop_unseen=drop_unseen)
    _, ds = _read(path, screened.table, spec, spec.kind, cols, None)
    if not has_labels:
        ds = ds.remove_columns("label")
    elif screened.unusable:
        ds = _unlabel(ds, screened.unusable, spec)
    source = SplitSource(str(path), len(ds), unlabelled=len(screened.unusable), unseen=screened.unseen,
                         dropped=screened.dropped)
    notes = [f"{path.name}: no label column {cols['label']!r}; predicting text alone"] if not has_labels else []
    notes += [line for line in [delimiter_ignored(path, delimiter)] if line]
    return TaskData(spec, datasets.DatasetDict({split: ds}), {split: source}, tuple(notes), tuple(warnings))


def _unlabel(ds: datasets.Dataset, rows: Sequence[int], spec: TaskSpec) -> datasets.Dataset:
    """``ds`` with the label of ``rows`` set to -1 (NaN for a float label): no usable label."""
    blank = -1 if ds.features["label"].dtype != "float64" else math.nan
    labels, marked = ds["label"], set(rows)
    values = [blank if i in marked else y for i, y in enumerate(labels)]
    return ds.remove_columns("label").add_column("label", values, feature=ds.features["label"])
