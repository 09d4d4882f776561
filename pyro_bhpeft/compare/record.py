"""The :class:`Method` record, the :data:`METHODS` registry, which methods the installed extras allow, and the
one helper that keeps a shared fit on disk (:func:`cached_fit`)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from ..config import ConfigError
from ..io import atomic_dir
from ..registry import Registry
from .bench import Bench, Scored, fit_dir, post_hoc_dir
from .protocol import Protocol

__all__ = ["Method", "METHODS", "register_method", "available_methods", "cached_fit", "refusal"]

T = TypeVar("T")


@dataclass(frozen=True)
class Method:
    """A comparison method and the facts the harness reads about it.

    ``run(bench, seed)`` fits (or loads the shared fits it needs from ``bench``) and predicts the test
    and OOD examples. ``point_mass``: it predicts with a point estimate, no posterior samples.
    ``has_scales``: its posterior has per-site scales worth a scale-forest figure (read from
    :meth:`posterior_dir`). ``base_fit``: the recipe changes (to :meth:`Protocol.recipe`) of the
    :meth:`Bench.fitted` fit it predicts from or builds on, ``{}`` for the deterministic LoRA, None when it
    fits outside the cache. ``post_hoc``: the name of the posterior it builds on ``base_fit`` and keeps
    at :func:`post_hoc_dir` (the Laplace approximation), or None. ``requires``: the optional modules it
    imports and the command that installs them, checked before any cell runs (:meth:`check_installed`).
    ``backbone_dropout``: it samples the backbone's own dropout, so a backbone without any (Llama-family
    models) is refused before any cell runs. ``regression``: it also scores regression tasks (predictive
    mean and variance); the others are refused on one before any cell runs. ``linear_head``: it works on the
    model's linear classifier head (a closed form over it), so a protocol scoring choices by their likelihood
    under a causal LM (``cloze``), whose model has no such head, refuses it before any cell runs.
    """

    description: str
    run: Callable[[Bench, int], Scored]
    point_mass: bool = False
    has_scales: bool = False
    base_fit: Mapping[str, Any] | None = None
    post_hoc: str | None = None
    requires: tuple[tuple[str, ...], str] | None = None
    backbone_dropout: bool = False
    regression: bool = False
    linear_head: bool = False

    def missing(self) -> list[str]:
        """The optional modules this method needs that are not installed."""
        modules = self.requires[0] if self.requires is not None else ()
        return [m for m in modules if importlib.util.find_spec(m) is None]

    def check_installed(self, name: str) -> None:
        """Raise a one-line :class:`ConfigError` naming the install command if a required module is missing."""
        missing = self.missing()
        if missing:
            raise ConfigError(f"method {name!r} needs {', '.join(missing)}, which is not installed: {self.requires[1]}")

    def __post_init__(self) -> None:
        if not isinstance(self.description, str) or not self.description:
            raise ConfigError("a comparison method needs a one-line description")
        if not callable(self.run):
            raise ConfigError(f"a comparison method's run must be callable (bench, seed) -> Scored, got {self.run!r}")
        if self.post_hoc is not None and self.base_fit is None:
            raise ConfigError(f"post-hoc posterior {self.post_hoc!r} needs the base_fit it is built on")
        if self.has_scales and self.base_fit is None:
            raise ConfigError("has_scales needs a saved posterior: give base_fit (and post_hoc if it is post-hoc)")

    @classmethod
    def sampled(cls, description: str, changes: Mapping[str, Any] | None = None, *, point_mass: bool = False,
                has_scales: bool = False, samples: int | None = None, regression: bool = False) -> "Method":
        """The fit of ``Protocol.recipe(seed, **changes)``, predicting with ``protocol.samples`` posterior
        samples (``samples`` where the method's authors fix their own; none when ``point_mass``)."""
        changes = dict(changes or {})

        def run(bench: Bench, seed: int) -> Scored:
            from ..predict import predict

            posterior, facts = bench.fitted(bench.protocol.recipe(seed, **changes))
            k = 0 if point_mass else samples or bench.protocol.samples
            preds = bench.predict_all(lambda loader: predict(posterior, loader, num_samples=k, seed=seed))
            return Scored(preds, facts["seconds"], facts["peak_mb"], facts["trainable"])

        return cls(description, run, point_mass=point_mass, has_scales=has_scales, base_fit=changes,
                   regression=regression)

    def posterior_dir(self, out: Path, protocol: Protocol, seed: int) -> Path | None:
        """The saved posterior this method predicts with for ``seed``, or None when none is on disk."""
        if self.base_fit is None:
            return None
        path = (post_hoc_dir(out, self.post_hoc, seed) if self.post_hoc is not None
                else fit_dir(out, protocol.recipe(seed, **self.base_fit)))
        return path if path.exists() else None


METHODS: Registry[Method] = Registry("comparison method")
_LIBRARY: list[str] = []  # the methods the library itself registers (see :func:`available_methods`)


def register_method(name: str, method: Method, *, replace: bool = False, after: str | None = None) -> Method:
    """Make ``method`` available to :func:`run_compare` and ``pyro-bhpeft compare --methods`` as ``name``
    (``after``: listed right after that method); ``METHODS.unregister(name)`` removes it."""
    if not isinstance(method, Method):
        raise ConfigError(f"register a Method record, got {type(method).__name__}")
    return METHODS.register(name, method, replace=replace, after=after)


def available_methods(names: Iterable[str] | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """``(runnable, skipped)``: of ``names`` (default: the library's own methods, in registry order), those
    whose optional libraries are installed, and ``{name: reason}`` for the others."""
    names = [n for n in METHODS if n in _LIBRARY] if names is None else METHODS.check(names)
    runnable, skipped = [], {}
    for name in names:
        missing = METHODS[name].missing()
        if missing:
            skipped[name] = f"needs {', '.join(missing)} ({METHODS[name].requires[1]})"
        else:
            runnable.append(name)
    return tuple(runnable), skipped


def library_methods_registered() -> None:
    """Mark every method registered so far as the library's own (called once, after the built-ins)."""
    _LIBRARY[:] = list(METHODS)


def cached_fit(path: Path, marker: str, build: Callable[[], T], write: Callable[[T, Path], None],
               load: Callable[[Path], T]) -> T:
    """A shared fit kept at ``path``: ``load(path)`` when ``path / marker`` exists, else ``build()``, written
    there atomically by ``write(value, staging_dir)`` (an interrupted write leaves nothing half-done)."""
    if (path / marker).exists():
        return load(path)
    value = build()
    with atomic_dir(path, overwrite=True) as stage:
        write(value, stage)
    return value


def refusal(protocol: Protocol, name: str) -> str | None:
    """Why the harness cannot run method ``name`` under ``protocol`` (a phrase), or None when it can. A method
    with a prefix part cannot run on a backbone whose attention skips transformers' registry (MPNet). Choices
    scored by their likelihood under a causal LM (``cloze``) leave no classifier head: the methods that train
    LoRA through the peft library (which scores answer letters or a pooled head only) and those that work on
    the linear head cannot run there."""
    entry = METHODS[name]
    peft = (entry.base_fit or {}).get("peft")
    if peft is not None and peft.prefix is not None:
        from ..backbone import prefix_refusal

        if why := prefix_refusal(protocol.backbone):
            return why
    if protocol.mc_scoring == "letters":
        return None
    if "peft" in (entry.requires or ((), ""))[0]:
        return f"trains LoRA through the peft library, which cannot score choices by {protocol.mc_scoring}"
    if entry.linear_head:
        return f"needs a linear classifier head, which a model scoring choices by {protocol.mc_scoring} has not"
    return None
