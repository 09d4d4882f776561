"""Checkpoint and resume a fit, and stop it cleanly on Ctrl-C.

A checkpoint is one safetensors file (tensors in its body, the rest as JSON in its header; no pickle, so a
planted file runs no code) holding everything the rest of a fit depends on: the step reached, the guide's
parameters (and any learned prior scales), the optimisers' and schedules' state, the random-number
generators (torch, Python, NumPy) and the curves so far. It is written atomically (a temporary file
renamed into place), so an interruption leaves the previous checkpoint. Resuming replays the data
order up to the saved step without computing, restores the state and continues: the final posterior
is the one an uninterrupted fit with the same seed gives.

Example::

    ckpt = Checkpoint("runs/sst.checkpoint.safetensors", every=100)
    fit(model, guide, loader, checkpoint=ckpt)                  # Ctrl-C: saved at the step boundary
    fit(model, guide, loader, checkpoint=ckpt.resuming())       # continues from the saved step
"""

from __future__ import annotations

import random
import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Checkpoint", "FitInterrupted", "StopOnInterrupt", "save_state", "load_state", "check_resumable",
           "saved_identity", "resumable",
           "rng_state", "set_rng_state"]


@dataclass(frozen=True)
class Checkpoint:
    """Where a fit keeps its checkpoint, every how many steps it saves one (0: only when interrupted),
    whether to resume from it, and ``identity``: what must match for a resume (e.g. the recipe)."""

    path: str | Path
    every: int = 0
    resume: bool = False
    identity: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ValueError(f"checkpoint every must be a whole number of steps >= 0, got {self.every!r}")

    def resuming(self) -> "Checkpoint":
        return replace(self, resume=True)


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C during a fit: the step reached and the checkpoint that holds it."""

    def __init__(self, step: int, total: int, path: Path) -> None:
        super().__init__(f"interrupted at step {step} of {total}; checkpoint kept at {path}")
        self.step, self.total, self.path = step, total, Path(path)


class StopOnInterrupt:
    """Turn the first Ctrl-C into a request the fit honours at the end of the current step (so the
    saved state is consistent); a second Ctrl-C interrupts at once. Only in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, as safetensors plus JSON (no pickle); its ``identity`` is also
    kept apart in the header, so a resume checks it before reading any tensor."""
    from .safe_state import write_state

    write_state(path, state, header={"identity": state.get("identity")})


def saved_identity(path: str | Path) -> Any:
    """The identity (e.g. the recipe) of the checkpoint at ``path``, read from its JSON header only."""
    from .safe_state import read_header

    header = read_header(path)
    return header.get("identity") if isinstance(header, dict) else None


def resumable(path: str | Path, identity: Any) -> bool:
    """Whether ``path`` holds a readable checkpoint of the fit ``identity`` names (only its header is read)."""
    from .safe_state import StateError

    try:
        return Path(path).is_file() and _same(saved_identity(path), identity)
    except StateError:
        return False


def _same(saved: Any, identity: Any) -> bool:
    """JSON-equal: an identity is compared as it reads back from the file (tuples as lists)."""
    import json

    return json.loads(json.dumps(saved)) == json.loads(json.dumps(identity))


def load_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """The saved state of ``checkpoint``, or a one-line error: no checkpoint, not ours, or one of another fit.

    The identity is checked from the file's JSON header before any tensor is read; nothing is unpickled."""
    from .safe_state import StateError, read_state

    path = check_resumable(checkpoint)
    try:
        return read_state(path)
    except StateError as err:
        raise ValueError(f"{err}; delete it to start the fit again") from None


def check_resumable(checkpoint: Checkpoint) -> Path:
    """The path of ``checkpoint`` once its JSON header shows a checkpoint of this fit (no tensor is read), else a
    one-line error: no checkpoint, not ours, or one of another fit."""
    from .safe_state import StateError

    path = Path(checkpoint.path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path} to resume from; run without --resume to start the fit")
    try:
        saved = saved_identity(path)
    except StateError as err:
        raise ValueError(f"{err}; it is not read (delete it to start the fit again)") from None
    if checkpoint.identity is not None and not _same(saved, checkpoint.identity):
        raise ValueError(f"the checkpoint at {path} belongs to a fit with another recipe; resume with the same "
                         "options, or delete it to start again")
    return path


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["random"]))
    np.random.set_state(tuple(state["numpy"]))


def _tuples(value: Any) -> Any:
    """Lists back to the tuples Python's ``random.setstate`` wants."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
