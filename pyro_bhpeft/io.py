"""Atomic writes: a reader sees the old files or the new ones, never a half-written mix."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["atomic_dir", "atomic_file", "write_json", "write_text", "write_rows", "asdict_since"]


def asdict_since(value: Any, added: Sequence[str]) -> dict[str, Any]:
    """``dataclasses.asdict(value)`` without the fields named in ``added`` while they hold their defaults: fields
    added after values of the type were first saved or hashed, so older files and keys keep matching."""
    defaults = {f.name: f.default for f in dataclasses.fields(value) if f.name in added}
    return {k: v for k, v in dataclasses.asdict(value).items() if k not in defaults or v != defaults[k]}


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` only if the block succeeds.

    An existing ``path`` is refused unless ``overwrite``; it is swapped out by renames, so an
    interruption leaves either the previous directory or the new one.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another output directory or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(stage, 0o755)  # mkdtemp makes it private; results are for reading
    try:
        yield stage
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(stage, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only if the block succeeds.

    Folders are created; the file is made world-readable. An interruption or error leaves the old
    file (or none) and no temporary file.

    Example::

        with atomic_file("out/figure.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for reading
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write a file atomically (temporary file in the same directory, then rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys) atomically as ``.csv`` or JSON Lines (``.jsonl``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    if path.suffix == ".csv":
        import pandas as pd

        return write_text(path, pd.DataFrame(list(rows)).to_csv(index=False))
    raise ValueError(f"{path}: use a .csv or .jsonl file name")


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
