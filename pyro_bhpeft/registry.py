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

__all__ = ["Registry", "RecordView"]

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



class RecordView:
    """One field of a registry of records, read (and filled) as a registry of its own: the names whose record
    has the field set, in the records' order. ``register(name, value)`` sets the field of ``name``'s record
    (creating the record with its other fields None), so two modules can each fill their part of one record.

    Example::

        PRIOR_KINDS = Registry("prior")                 # name -> PriorKind(cls, by_name)
        PRIORS = RecordView(PRIOR_KINDS, "by_name", PriorKind)
        PRIORS["normal"](0.5)                           # the record's by-name factory
    """

    def __init__(self, records: Registry, field: str, record: type, what: str | None = None) -> None:
        self.records, self.field, self.record, self.what = records, field, record, what or records.what

    def _value(self, name: str) -> Any:
        entry = self.records.get(name)
        return None if entry is None else getattr(entry, self.field)

    def register(self, name: str, value: Any = _MISSING, *, replace: bool = False) -> Any:
        if value is _MISSING:
            def decorate(obj: Any) -> Any:
                self.register(name, obj, replace=replace)
                return obj

            return decorate
        if self._value(name) is not None and not replace:
            raise ConfigError(f"{self.what} {name!r} is already registered; pass replace=True to override it")
        import dataclasses

        entry = self.records.get(name)
        new = dataclasses.replace(entry, **{self.field: value}) if entry is not None else self.record(**{self.field: value})
        self.records.register(name, new, replace=True)
        return value

    def unregister(self, name: str) -> None:
        import dataclasses

        entry = self.records.get(name)
        if entry is None:
            return
        rest = dataclasses.replace(entry, **{self.field: None})
        if all(getattr(rest, f.name) is None for f in dataclasses.fields(rest)):
            self.records.unregister(name)
        else:
            self.records.register(name, rest, replace=True)

    def names(self) -> list[str]:
        return [n for n in self.records if self._value(n) is not None]

    def __getitem__(self, name: str) -> Any:
        value = self._value(name) if isinstance(name, str) else None
        if value is None:
            raise ConfigError(f"unknown {self.what} {name!r}; choose one of {', '.join(self.names())}")
        return value

    def get(self, name: str, default: Any = None) -> Any:
        value = self._value(name)
        return default if value is None else value

    def check(self, names: Any) -> list[str]:
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self]
        if unknown or not names:
            raise ConfigError(f"unknown {self.what}{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown)) or '(none given)'}; choose from {', '.join(self.names())}")
        return names

    def items(self) -> list[tuple[str, Any]]:
        return [(n, self._value(n)) for n in self.names()]

    def values(self) -> list[Any]:
        return [v for _, v in self.items()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._value(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"RecordView({self.what!r}: {', '.join(self.names())})"
