"""One small registry type for every open axis: PEFT kinds, guides, task kinds, comparison methods.

Adding a PEFT kind, guide, task kind or method is one new file plus one registration line; the
CLI reads its choices and help from the registries, and an unknown name gets one line that lists
the known ones.

Example::

    from pyro_bhpeft.registry import Registry

    COLOURS = Registry("colour")
    COLOURS.register("red", (255, 0, 0))

    @COLOURS.register("green")
    def green():
        ...

    COLOURS["blue"]        # ConfigError: unknown colour 'blue'; choose one of green, red
"""

from __future__ import annotations

from typing import Any, Generic, Iterator, TypeVar

from .errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")
_MISSING: Any = object()


class Registry(Generic[T]):
    """An ordered name -> entry mapping whose misses raise a :class:`ConfigError` naming the choices."""

    def __init__(self, what: str) -> None:
        self.what = what  # "PEFT kind", "guide", ... used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T = _MISSING, *, replace: bool = False, after: str | None = None) -> Any:
        """Register ``entry`` under ``name``; without ``entry``, a decorator that registers what it decorates.

        A second registration of the same name is an error unless ``replace=True``. ``after``: place the new
        name right after that registered one (the order the CLI and summaries list them in), not last.
        """
        if entry is _MISSING:
            def decorate(obj: T) -> T:
                self.register(name, obj, replace=replace, after=after)
                return obj

            return decorate
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.what} needs a non-empty string name, got {name!r}")
        if name in self._entries and not replace:
            raise ConfigError(f"{self.what} {name!r} is already registered; pass replace=True to override it")
        if after is not None and name not in self._entries:
            self[after]  # an unknown anchor: one line naming the choices
            items = list(self._entries.items())
            at = [n for n, _ in items].index(after) + 1
            self._entries = dict(items[:at] + [(name, entry)] + items[at:])
            return entry
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that clean up after themselves)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.what} {name!r}; choose one of {', '.join(self._entries)}") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._entries.get(name, default)

    def check(self, names: Any) -> list[str]:
        """``names`` (one or several) as a list, or a ConfigError naming every unknown one and the choices."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self._entries]
        if unknown or not names:
            raise ConfigError(f"unknown {self.what}{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown)) or '(none given)'}; "
                              f"choose from {', '.join(self._entries)}")
        return names

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"

