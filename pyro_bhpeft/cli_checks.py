"""Checks the command line makes before a fit trains: where it writes, whether that is free, and the options
the model or the data cap. Each failure is a :class:`~pyro_bhpeft.cli_options.UserError` (one line, exit 2).

Example::

    with OutputLock(out):          # a second fit to the same --out fails at once
        check_output(out, overwrite=False, resume=False)
        ...                        # train and save
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .cli_options import UserError

__all__ = ["OutputLock", "check_output", "check_checkpoint", "check_writable", "check_max_length", "MIN_FREE_BYTES"]

MIN_FREE_BYTES = 64 * 2**20  # a run (PEFT weights, config, history) plus its checkpoint, with room to spare


def check_output(out: str, *, overwrite: bool, flag: str = "--out") -> Path:
    """The run directory ``out`` to write: refused when empty, when it holds a run (unless ``overwrite``), and
    always when it is a file or a folder that is not a run of ours (``--overwrite`` never replaces those).
    What killed saves left beside it is cleaned first (:func:`~pyro_bhpeft.io.clean_leftovers`)."""
    from .io import clean_leftovers
    from .posterior import is_run

    if not out or not out.strip() or Path(out) == Path("."):
        raise UserError(f"{flag} is empty; give the name of a new directory for the run")
    path = Path(out)
    clean_leftovers(path)  # a run a killed save left half-swapped is put back first
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise UserError(f"{path} exists and is not a directory; choose another {flag}")
    if path.is_dir() and any(path.iterdir()):
        if not is_run(path):
            raise UserError(f"{path} is a folder that is not a pyro-bhpeft run; it is never replaced (not even with "
                            f"--overwrite): choose another {flag}")
        if not overwrite:
            raise UserError(f"{path} already holds a run; pass --overwrite to replace it or choose another {flag}")
    return path


def check_checkpoint(out: Path, *, resume: bool, overwrite: bool) -> None:
    """An existing checkpoint of ``out`` is resumed only when asked: without ``--resume`` it is refused with the
    two choices (``--overwrite`` starts again and discards it); an older version's pickle is never read."""
    from .runs import checkpoint_path

    checkpoint, legacy = checkpoint_path(out), out.with_name(out.name + ".checkpoint.pt")
    if resume:
        if not checkpoint.is_file() and legacy.is_file():
            raise UserError(f"{legacy} was written by an older version as a pickle, which is never read (it could run "
                            "code); delete it and start the fit again")
        return
    if checkpoint.exists():
        if not overwrite:
            raise UserError(f"{checkpoint} holds an interrupted fit of {out}; pass --resume to continue it, or delete "
                            "it (or pass --overwrite) to start again")
        from .safe_state import StateError, read_header

        try:
            read_header(checkpoint)  # only a checkpoint of ours is removed
        except StateError:
            raise UserError(f"{checkpoint} is not a pyro-bhpeft checkpoint; it is left alone: move it or choose "
                            "another --out") from None
        checkpoint.unlink()


def check_writable(out: Path, need: int = MIN_FREE_BYTES) -> None:
    """Whether a run can be written at ``out``: its nearest existing folder takes a file, with ``need`` bytes free."""
    folder = out.resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{folder} is not a directory, so {out} cannot be written; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".pyro-bhpeft-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise UserError(f"cannot write in {folder} ({why}); choose another --out") from None
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UserError(f"only {free / 2**20:.0f} MB free in {folder}; a run needs about {need / 2**20:.0f} MB: free "
                        "some space or choose another --out")


def model_positions(backbone: str) -> int | None:
    """How many token positions ``backbone`` takes (None when its config does not say)."""
    from transformers import AutoConfig

    from .backbone import _resolve

    config = AutoConfig.from_pretrained(_resolve(backbone))
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_max_length(backbone: str, max_length: int) -> None:
    """``--max-length`` within the positions the backbone was trained with."""
    if max_length < 1:
        raise UserError(f"--max-length must be a positive number of tokens, got {max_length}")
    try:
        positions = model_positions(backbone)
    except OSError:
        return  # a hub backbone out of reach is reported, in one line, where it is loaded
    if positions is not None and max_length > positions:
        raise UserError(f"--max-length {max_length} is more than the {positions} positions of backbone {backbone}; "
                        f"use --max-length {positions} or less")


class OutputLock:
    """``<out>.lock``, created exclusively and holding this process's id, for as long as the block runs: a second
    command writing the same run fails at once. A lock whose process is gone is taken over; a file of that name
    that is not a lock is never removed."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out).with_name(Path(out).name + ".lock")
        self.held = False

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None and self.path.is_file() and self.path.stat().st_size > 0:
                    raise UserError(f"{self.path} exists and is not a lock of pyro-bhpeft's; it is left alone: move it "
                                    "or choose another --out") from None
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise UserError(f"another command (process {owner}) is writing {self.path.with_suffix('')}; wait for "
                                    f"it to finish or choose another --out (if it is gone, delete {self.path})") from None
                self.path.unlink(missing_ok=True)  # stale: its process has ended
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise UserError(f"could not take the lock {self.path}; delete it if no other fit is running")

    def __exit__(self, *exc: Any) -> None:
        if self.held and self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
