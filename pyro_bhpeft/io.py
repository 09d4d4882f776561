"""Atomic writes: a reader sees the old files or the new ones, never a half-written mix."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

__all__ = ["atomic_dir", "atomic_file", "write_json", "write_text", "write_rows", "asdict_since", "clean_leftovers"]

STALE_SECONDS = 24 * 3600  # a leftover whose name carries no process id is removed after a day


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_leftovers(path: str | Path) -> None:
    """Remove what killed writes of ``path`` left beside it: ``.NAME.tmp-PID-*`` stages and ``.NAME.old-PID``
    copies of processes no longer running (or, without a process id, older than a day). An ``.old`` copy is
    the previous version itself when a kill fell between the two renames: it is put back, not removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(tmp|old)-(?:(\d+)(?:-|$))?")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for leftover in siblings:
        match = pattern.match(leftover.name)
        if not match:
            continue
        pid = int(match.group(2)) if match.group(2) else None
        try:
            if pid == os.getpid() or (pid is not None and _alive(pid)) or (
                    pid is None and time.time() - leftover.lstat().st_mtime < STALE_SECONDS):
                continue
            if match.group(1) == "old" and not path.exists() and not path.is_symlink():
                os.replace(leftover, path)  # the kill came between the renames: this is the saved version
            elif leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except OSError:
            continue


def asdict_since(value: Any, added: Sequence[str]) -> dict[str, Any]:
    """``dataclasses.asdict(value)`` without the fields named in ``added`` while they hold their defaults: fields
    added after values of the type were first saved or hashed, so older files and keys keep matching."""
    defaults = {f.name: f.default for f in dataclasses.fields(value) if f.name in added}
    return {k: v for k, v in dataclasses.asdict(value).items() if k not in defaults or v != defaults[k]}


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False,
               replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` only if the block succeeds.

    An existing ``path`` (other than an empty directory) is refused unless ``overwrite``, and, with
    ``replaceable``, unless ``replaceable(path)`` says it is a directory of ours (a run, a comparison): never a
    user's folder. It is
    swapped out by renames, so an interruption leaves either the previous directory or the new one; what
    killed writes left beside ``path`` is cleaned first (:func:`clean_leftovers`).
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError("the output directory is empty or '.'; give a new directory's name")
    clean_leftovers(path)
    taken = path.exists() or path.is_symlink()
    if taken and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        taken = False  # an empty directory: nothing in it to lose
    if taken and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another output directory or allow overwriting")
    if taken and (not path.is_dir() or path.is_symlink() or (replaceable and not replaceable(path))):
        raise FileExistsError(f"{path} exists and is not a directory written by pyro-bhpeft; it is never replaced: "
                              "choose another output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
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
    clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")
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
