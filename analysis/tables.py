"""Markdown tables for reports: one function, so every table in the project is written the same way.

Example::

    >>> print(markdown_table(["method", "accuracy %"], [["lora", "81.20"], ["mean-field", "82.05"]]))
    | method | accuracy % |
    |---|---|
    | lora | 81.20 |
    | mean-field | 82.05 |
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["markdown_table"]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table: one header line, a ``|---|`` rule, one line per row.

    Cells are written with ``str``; format numbers before passing them. A row whose length differs from
    ``headers`` is a ``ValueError`` (a shifted column is worse than no table).
    """
    headers = [str(h) for h in headers]
    if not headers:
        raise ValueError("a markdown table needs at least one column")
    lines = [_line(headers), "|" + "---|" * len(headers)]
    for i, row in enumerate(rows):
        row = [str(cell) for cell in row]
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells for {len(headers)} columns: {row!r}")
        lines.append(_line(row))
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
