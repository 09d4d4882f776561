"""Reading one user file into a pandas DataFrame: CSV/TSV/TXT (delimiter sniffed or given), JSON Lines, a
JSON array, or Parquet. Every problem is a one-line :class:`DataError` naming the file and the fix.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .types import DataError

__all__ = ["read_table", "sniff_delimiter", "normalize_delimiter", "delimiter_ignored", "SUFFIXES", "DELIMITED",
           "DELIMITERS"]

DELIMITED = {".csv": ",", ".tsv": "\t", ".txt": "\t"}  # delimited text files and the delimiter their suffix implies
SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json", ".parquet")
DELIMITERS = (",", "\t", ";", "|")  # what sniffing chooses among
DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
SAMPLE_BYTES = 65536
SAMPLE_ROWS = 20


def normalize_delimiter(delimiter: str | None) -> str | None:
    """One delimiter character from what a user types: ``,`` ``;`` ``|``, a tab, or ``\\t``/``tab`` for a tab."""
    if delimiter is None:
        return None
    named = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(delimiter.lower() if isinstance(delimiter, str) else delimiter, delimiter)
    if not isinstance(value, str) or len(value) != 1 or value in "\"\r\n":
        raise DataError(f"delimiter must be one character such as ',' ';' '|' or '\\t' (tab), got {delimiter!r}; "
                        "fix --delimiter")
    return value


def _rows(sample: str, delimiter: str) -> list[list[str]]:
    """The first rows of ``sample`` split by ``delimiter`` (quotes respected, blank lines skipped)."""
    try:
        rows = [r for r in csv.reader(io.StringIO(sample), delimiter=delimiter) if r]
    except csv.Error:
        return []
    if len(rows) > SAMPLE_ROWS:
        return rows[:SAMPLE_ROWS]
    return rows[:-1] if len(rows) > 2 else rows  # the sample's last row may be cut off inside a quoted field


def sniff_delimiter(sample: str, default: str = ",") -> str:
    """The delimiter of a delimited text ``sample`` (the header and the first lines).

    A candidate fits when it splits the header into at least two columns and every sampled row into
    as many; ``default`` (the suffix's) wins when it fits, else the fitting one with most columns, else
    :class:`csv.Sniffer`'s guess among ``DELIMITERS``, else ``default``.

    Example::

        sniff_delimiter("text;label\\nGut;1\\n")   # ';'
    """
    fits = {}
    for d in DELIMITERS:
        rows = _rows(sample, d)
        if rows and len(rows[0]) >= 2 and all(len(r) == len(rows[0]) for r in rows):
            fits[d] = len(rows[0])
    if default in fits:
        return default
    if fits:
        return max(fits, key=lambda d: (fits[d], -DELIMITERS.index(d)))
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        return default


def _sample(path: Path) -> str:
    """The file's first bytes as text, cut after its last whole line when the file is longer."""
    with path.open("rb") as fh:
        head = fh.read(SAMPLE_BYTES + 1)
    if len(head) > SAMPLE_BYTES:
        head = head[:head.rfind(b"\n", 0, SAMPLE_BYTES) + 1] or head[:SAMPLE_BYTES]
    return head.decode("utf-8-sig", errors="replace")


def delimiter_ignored(path: str | Path, delimiter: str | None) -> str:
    """One line when a ``delimiter`` was given for a file that has none (JSON, Parquet), else ''."""
    path = Path(path)
    if delimiter is None or path.suffix.lower() in DELIMITED:
        return ""
    return f"{path.name}: --delimiter applies to {', '.join(DELIMITED)} files only; ignored for this file"


def wrong_delimiter_hint(columns) -> str:
    """A hint when the header came out as one column holding another delimiter ('' when it does not)."""
    names = [str(c) for c in columns]
    if len(names) != 1:
        return ""
    found = next((d for d in ("\t", ";", "|", ",") if d in names[0]), None)
    if found is None:
        return ""
    shown = "'\\t'" if found == "\t" else repr(found)
    return f"; the header looks {DELIMITER_NAMES[found]}-separated: pass --delimiter {shown}"


def _read_delimited(path: Path, delimiter: str | None):
    import pandas as pd

    sep = delimiter or sniff_delimiter(_sample(path), DELIMITED[path.suffix.lower()])
    table = pd.read_csv(path, sep=sep, encoding="utf-8-sig")
    table.attrs["delimiter"] = sep  # to re-read a column as written (files.as_written)
    return table


def read_table(path: str | Path, *, delimiter: str | None = None):
    """A pandas DataFrame from a ``.csv``/``.tsv``/``.txt``, ``.jsonl``/``.json`` or ``.parquet`` file.

    Delimited text files are read as UTF-8 with the ``delimiter`` given, else the one sniffed from the
    header and the first lines (``,`` tab ``;`` ``|``; the suffix's delimiter when it fits). ``delimiter``
    is ignored for JSON and Parquet. Problems raise a one-line :class:`DataError`.

    Example::

        df = read_table("reviews.tsv")
        df = read_table("export.csv", delimiter=";")
    """
    path = Path(path)
    delimiter = normalize_delimiter(delimiter)
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
    df = _parse(path, suffix, head, delimiter)
    if len(df) == 0:
        raise DataError(f"{path} has no rows; it needs at least one labelled example")
    return df


def _parse(path: Path, suffix: str, head: bytes, delimiter: str | None):
    import pandas as pd

    try:
        if suffix in DELIMITED:
            return _read_delimited(path, delimiter)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        # JSON Lines, or a .json file holding one array of records
        return pd.read_json(path, lines=not (suffix == ".json" and head.startswith(b"[")), orient="records",
                            dtype=False)  # values as written: an answer "007" stays text
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not UTF-8 text; save it as UTF-8 (most spreadsheet programs offer "
                        "'CSV UTF-8')") from None
    except (ValueError, OSError) as err:  # parser, decoding and Arrow errors are ValueErrors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "; if the columns are split by another character, pass --delimiter" if suffix in DELIMITED else ""
        raise DataError(f"{path.name} could not be read as {suffix[1:]} ({reason}); check the file's format{hint}"
                        ) from None
