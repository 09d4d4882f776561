"""What a user file's label column says: the task kind it implies, class names that differ only in case,
and the rows of an evaluation file whose labels the fitted task cannot score (missing, or unseen classes).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .types import DATA_KINDS, DataError, TaskSpec

__all__ = ["infer_kind", "case_variants", "numeric_classes", "label_key", "class_id", "screen_labels", "Screened",
           "MAX_INFERRED_CLASSES"]

MAX_INFERRED_CLASSES = 20  # more distinct whole numbers than this (not the ids 0..K-1 or 1..K) read as measurements


def missing(value: Any) -> bool:
    """Whether a cell is empty (None or NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def label_key(v: Any) -> str:
    """The class name a label value stands for: ``1``, ``1.0`` and ``"1"`` are all ``"1"``."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _number(v: Any) -> float | None:
    """The label as a number, or None when it is not one (booleans are not numbers here)."""
    if isinstance(v, bool) or missing(v):
        return None
    try:
        number = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def _class_ids_shape(numbers: set[float]) -> bool:
    """Whether whole numbers look like class ids: every one of 0..K-1 or of 1..K present."""
    lo, hi = min(numbers), max(numbers)
    return lo in (0, 1) and hi - lo + 1 == len(numbers)


def infer_kind(table: Any, columns: Mapping[str, str]) -> tuple[str, str]:
    """``(kind, note)`` for a training table read with ``kind=None``; ``note`` is one line saying so.

    Multiple choice when the file has the question and choices columns but no text column; regression
    when every label is a number and they are real-valued (any non-whole value) or more than
    ``MAX_INFERRED_CLASSES`` distinct whole numbers that are not the class ids 0..K-1 / 1..K;
    classification otherwise (words, or a few whole numbers).

    Example::

        infer_kind(pd.DataFrame({"text": ["a", "b"], "label": [0.25, 3.5]}), {"text": "text", "label": "label"})
        # ("regression", "task kind: regression, inferred from column 'label' (2 distinct real numbers); ...")
    """
    names = set(map(str, table.columns))
    text, label = columns.get("text", "text"), columns.get("label", "label")
    question, choices = columns.get("question", "question"), columns.get("choices", "choices")
    prompt, response = columns.get("prompt", "prompt"), columns.get("response", "response")
    if text not in names and prompt in names and response in names:
        return "language_model", (f"task kind: language_model, inferred from the columns {prompt!r} and "
                                  f"{response!r}; pass --kind to choose another")
    if text not in names and question in names and choices in names:
        return "multiple_choice", (f"task kind: multiple_choice, inferred from the columns {question!r} and "
                                   f"{choices!r}; pass --kind to choose another")
    if label not in names:
        return "classification", ""  # the reader names the missing column
    values = [v for v in table[label].tolist() if not missing(v)]
    numbers = [_number(v) for v in values]
    if values and all(n is not None for n in numbers):
        distinct = set(numbers)
        whole = all(n.is_integer() for n in distinct)
        if not whole or (len(distinct) > MAX_INFERRED_CLASSES and not _class_ids_shape(distinct)):
            return "regression", (f"task kind: regression, inferred from column {label!r} ({len(distinct):,} "
                                  f"distinct {'whole' if whole else 'real'} numbers); pass --kind classification "
                                  "to treat them as classes")
    classes = len({label_key(v) for v in values})
    return "classification", (f"task kind: classification, inferred from column {label!r} ({classes:,} classes); "
                              "pass --kind regression if the labels are measurements")


def case_variants(names: Sequence[str], values: Sequence[Any], column: str) -> str:
    """One warning line naming the classes that differ only in case or spacing ('' when none do).

    They stay separate classes (nothing is merged silently); the line says how many rows each has.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[" ".join(name.split()).casefold()].append(name)
    clashes = [g for g in groups.values() if len(g) > 1]
    if not clashes:
        return ""
    counts = Counter(label_key(v) for v in values if not missing(v))
    shown = "; ".join(" / ".join(f"{n!r} ({counts[n]:,} rows)" for n in g) for g in clashes)
    return (f"column {column!r} has labels that differ only in case or spacing, kept as separate classes: {shown}; "
            "write each class one way in the file if they are the same class")


def numeric_classes(names: Sequence[str], column: str) -> str:
    """One warning line when class names are real numbers (a regression target read as classes), else ''."""
    numbers = [_number(n) for n in names]
    if not names or any(n is None for n in numbers) or all(n.is_integer() for n in numbers):
        return ""
    return (f"column {column!r} holds real numbers, now {len(names):,} separate classes; pass --kind regression "
            "if they are measurements")


def class_id(v: Any, index: Mapping[str, int], ids_allowed: bool) -> int | None:
    """The class id of label ``v`` (its name in ``index``, or an integer id when ``ids_allowed``), or None."""
    key = label_key(v)
    if key in index:
        return index[key]
    if ids_allowed and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(index):
        return v
    return None


def ids_allowed(names: Sequence[str]) -> bool:
    """Whether integer labels may stand for class ids: when no class name is itself a number."""
    return not any(str(n).lstrip("-").replace(".", "", 1).isdigit() for n in names)


@dataclass
class Screened:
    """An evaluation table after :func:`screen_labels`: the rows kept, which of them have no usable label
    (their label is then -1, or NaN for regression), and the counts to report."""

    table: Any
    unusable: list[int] = field(default_factory=list)  # positions in ``table`` whose label is a placeholder
    unseen: dict[str, int] = field(default_factory=dict)  # label -> rows, labels the task has no class for
    dropped: int = 0


def _placeholder(spec: TaskSpec) -> Any:
    return spec.label_names[0] if DATA_KINDS[spec.kind].class_labels else 0


def _count(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _rows(n: int) -> str:
    return f"{_count(n)} {'has' if n == 1 else 'have'}"


def _unseen_text(unseen: Mapping[str, int], names: Sequence[str]) -> str:
    folded = {n.casefold(): n for n in names}
    parts = []
    for label, rows in sorted(unseen.items(), key=lambda kv: -kv[1]):
        near = folded.get(" ".join(label.split()).casefold())
        parts.append(f"{label!r} ({_count(rows)}" + (f", like {near!r} but for case)" if near else ")"))
    return ", ".join(parts)


def _bad_rows(table: Any, spec: TaskSpec, column: str, require_labels: bool) -> list[tuple[int, Any]] | None:
    """``(position, label)`` of the rows whose label the task cannot use, or None when the kind's reader
    checks the labels itself (any kind with labels required, except the class kinds)."""
    kind, values = DATA_KINDS[spec.kind], table[column].tolist()
    if kind.class_labels:
        index, allowed = {str(n): i for i, n in enumerate(spec.label_names)}, ids_allowed(spec.label_names)
        return [(i, v) for i, v in enumerate(values) if missing(v) or class_id(v, index, allowed) is None]
    if kind.label_dtype == "float64" and not require_labels:
        return [(i, v) for i, v in enumerate(values) if _number(v) is None]
    return None


def screen_labels(table: Any, path: Path, spec: TaskSpec, column: str, *, require_labels: bool,
                  drop_unseen: bool) -> tuple[Screened, list[str]]:
    """The rows of an evaluation ``table`` its labels let us use, and one-line warnings about the rest.

    Without a label column, every row gets a placeholder label (the caller drops the column). Rows with an
    unseen class (classification) are an error naming each class and its row count unless ``drop_unseen``
    (dropped) or not ``require_labels`` (kept, label -1); without ``require_labels``, empty or unreadable
    labels are kept as -1 (NaN for regression) too.
    """
    if column not in table.columns:
        return Screened(table.assign(**{column: _placeholder(spec)}), list(range(len(table)))), []
    bad = _bad_rows(table, spec, column, require_labels)
    if bad is None:
        return Screened(table), []
    name, names = path.name, spec.label_names
    filled = [(i, v) for i, v in bad if not missing(v)]  # a label, but not one the task has
    unseen = dict(Counter(label_key(v) for _, v in filled)) if DATA_KINDS[spec.kind].class_labels else {}
    if unseen and require_labels and not drop_unseen:
        raise DataError(f"{name}: {_rows(len(filled))} a class not among the training classes: "
                        f"{_unseen_text(unseen, names)}; drop them with --drop-unseen, or fit on data "
                        "that has these classes")
    warnings, dropped = [], 0
    if unseen and drop_unseen:
        table, bad, dropped = _drop(table, bad, {i for i, _ in filled})
        if not len(table):
            raise DataError(f"{name}: every row has a class not among the training classes "
                            f"({_unseen_text(unseen, names)}); nothing is left to score")
        warnings.append(f"{name}: dropped {_count(dropped)} of classes not among the training classes: "
                        f"{_unseen_text(unseen, names)}")
    elif unseen:
        warnings.append(f"{name}: {_rows(len(filled))} a class not among the training classes: "
                        f"{_unseen_text(unseen, names)}; their label reads -1")
    elif filled:
        warnings.append(f"{name}: {_rows(len(filled))} a label that is not a number (first {filled[0][1]!r}); "
                        "their label reads NaN")
    if require_labels:  # the kind's reader names the first empty label
        return Screened(table, unseen=unseen, dropped=dropped), warnings
    return Screened(_fill(table, column, [i for i, _ in bad], _placeholder(spec)), [i for i, _ in bad], unseen,
                    dropped), warnings


def _drop(table: Any, bad: list[tuple[int, Any]], rows: set[int]) -> tuple[Any, list[tuple[int, Any]], int]:
    """``table`` without ``rows``, the positions of the other ``bad`` rows in it, and how many were dropped."""
    keep = [i for i in range(len(table)) if i not in rows]
    moved = {old: new for new, old in enumerate(keep)}
    return (table.iloc[keep].reset_index(drop=True), [(moved[i], v) for i, v in bad if i in moved],
            len(table) - len(keep))


def _fill(table: Any, column: str, rows: list[int], value: Any) -> Any:
    """A copy of ``table`` with ``value`` in ``column`` at ``rows`` (positions)."""
    if not rows:
        return table
    table = table.copy()
    table[column] = table[column].astype(object)
    table.loc[table.index[rows], column] = value
    return table
