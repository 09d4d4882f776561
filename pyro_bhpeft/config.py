"""Configuration of the Bayesian PEFT parts: small frozen dataclasses that validate themselves.

Example::

    cfg = PeftConfig(lora=LoraConfig(r=8, lora_alpha=16, target_modules=("query", "value")),
                     adapter=AdapterConfig(bottleneck=16),
                     prefix=PrefixConfig(length=8))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError
from .io import asdict_since
from .registry import RecordView, Registry

__all__ = ["ConfigError", "LoraConfig", "AdapterConfig", "PrefixConfig", "PeftConfig", "PeftKind", "PEFT_KINDS",
           "PEFT_CONFIGS"]


@dataclass(frozen=True)
class PeftKind:
    """A PEFT kind, one record: its config dataclass and ``add(target, config) -> layers``, the function that
    adds its layers to a backbone (:mod:`pyro_bhpeft.layers`)."""

    config: type | None = None
    add: Callable[[Any, Any], list] | None = None


# PEFT kind name -> its record; filled by ``pyro_bhpeft.layers.register_peft_kind`` (one line per kind).
PEFT_KINDS: Registry[PeftKind] = Registry("PEFT kind")
PEFT_CONFIGS = RecordView(PEFT_KINDS, "config", PeftKind)  # name -> config dataclass (a view of PEFT_KINDS)


def _positive_int(value: object, what: str, example: str) -> int:
    """``value`` as an int, or a ConfigError naming ``what`` (2.5, 0, True and "8" are all refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}; use e.g. {example}")
    return int(value)


def _check_layers(layers: tuple[int, ...] | None, owner: str) -> tuple[int, ...] | None:
    if layers is None:
        return None
    layers = tuple(int(i) for i in layers)
    if any(i < 0 for i in layers):
        raise ConfigError(f"{owner}.layers must be block indices >= 0, got {layers}")
    return layers


@dataclass(frozen=True)
class LoraConfig:
    """LoRA: ``y = W x + (lora_alpha / r) * B A x`` on every linear layer whose name ends with a target.

    Fields are named as in the peft library. ``target_modules`` follow Hugging Face module names (``query``, ``value`` for BERT; ``q_proj``,
    ``v_proj`` for Llama); ``None`` takes the model family's default (query and value projections,
    from :mod:`pyro_bhpeft.layers.arch`). ``layers`` restricts to transformer blocks by index (None = all).
    ``lora_dropout``: dropout on the LoRA branch's input, ``B A dropout(x)`` as in the peft library; like the
    backbone's own dropout it is on only where the backbone is in train mode (MC dropout), never in a plain fit.
    """

    ADDED_FIELDS = ("lora_dropout",)  # fields added after configs were first saved: written only when set
    RENAMED = {"alpha": "lora_alpha", "targets": "target_modules", "dropout": "lora_dropout"}  # files before 0.2

    r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", _positive_int(self.r, "LoRA rank r", "r=8"))
        if self.lora_alpha <= 0:
            raise ConfigError(f"LoRA lora_alpha must be positive, got {self.lora_alpha}")
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        if self.target_modules is not None:
            if not self.target_modules:
                raise ConfigError("LoRA target_modules is empty; name the linear layers, e.g. ('query', 'value'), "
                                  "or pass None for the model family's default")
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "layers", _check_layers(self.layers, "LoraConfig"))
        d = self.lora_dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ConfigError(f"LoRA lora_dropout is a probability in [0, 1), got {d!r}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


@dataclass(frozen=True)
class AdapterConfig:
    """Bottleneck adapter on each block's feed-forward output: ``h + up(act(down(h)))``."""

    bottleneck: int = 16
    activation: str = "gelu"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bottleneck", _positive_int(self.bottleneck, "adapter bottleneck", "bottleneck=16"))
        if self.activation not in ("gelu", "relu", "tanh", "silu"):
            raise ConfigError(f"adapter activation {self.activation!r} is not one of gelu, relu, tanh, silu")
        object.__setattr__(self, "layers", _check_layers(self.layers, "AdapterConfig"))


@dataclass(frozen=True)
class PrefixConfig:
    """Prefix-tuning: ``length`` learned key/value vectors prepended in each chosen attention layer."""

    length: int = 8
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "length", _positive_int(self.length, "prefix length", "length=8"))
        object.__setattr__(self, "layers", _check_layers(self.layers, "PrefixConfig"))


_DEFAULT: Any = object()


def _ensure_builtin_kinds() -> None:
    """Register the built-in PEFT kinds on first use (they register themselves when :mod:`pyro_bhpeft.layers` is
    imported), so that importing this module stays free of torch."""
    if "lora" not in PEFT_CONFIGS:
        from . import layers  # noqa: F401


class PeftConfig:
    """Which PEFT parts to add: any subset of the registered kinds (a hybrid when several are given).

    ``PeftConfig()`` is LoRA alone; ``PeftConfig(lora=None, adapter=AdapterConfig())`` an adapter
    alone; a kind registered with :func:`pyro_bhpeft.layers.register_peft_kind` is passed by its name,
    ``PeftConfig(my_kind=MyConfig())``. Parts are applied in registration order. Immutable.
    """

    __slots__ = ("_parts",)

    def __init__(self, lora: LoraConfig | None = _DEFAULT, adapter: AdapterConfig | None = None,
                 prefix: PrefixConfig | None = None, **parts: Any) -> None:
        _ensure_builtin_kinds()
        given = {"lora": LoraConfig() if lora is _DEFAULT else lora, "adapter": adapter, "prefix": prefix, **parts}
        for name, value in given.items():
            kind = PEFT_CONFIGS[name] if value is not None else None
            if kind is not None and not isinstance(value, kind):
                raise ConfigError(f"PeftConfig.{name} must be a {kind.__name__} or None, got {type(value).__name__}")
        object.__setattr__(self, "_parts", {n: given[n] for n in PEFT_CONFIGS if given.get(n) is not None})

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PeftConfig is immutable; build a new one")

    def __deepcopy__(self, memo: dict) -> "PeftConfig":
        return self

    def __copy__(self) -> "PeftConfig":
        return self

    def __reduce__(self):
        return (_rebuild, (self.to_dict(),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeftConfig) and self._parts == other._parts

    def __hash__(self) -> int:
        return hash(tuple(self._parts.items()))

    def __repr__(self) -> str:
        return f"PeftConfig({', '.join(f'{k}={v!r}' for k, v in self._parts.items())})"

    def get(self, kind: str) -> Any:
        """The config of ``kind``, or None when that part is absent."""
        return self._parts.get(kind)

    @property
    def lora(self) -> LoraConfig | None:
        return self._parts.get("lora")

    @property
    def adapter(self) -> AdapterConfig | None:
        return self._parts.get("adapter")

    @property
    def prefix(self) -> PrefixConfig | None:
        return self._parts.get("prefix")

    @property
    def parts(self) -> dict[str, Any]:
        """Kind name -> config of every part present, in application order."""
        return dict(self._parts)

    @classmethod
    def hybrid(cls, r: int = 8, bottleneck: int = 16, prefix_length: int = 8) -> "PeftConfig":
        """LoRA + Adapter + prefix, the BH-PEFT hybrid (LoRA on the model family's default targets)."""
        return cls(LoraConfig(r=r), AdapterConfig(bottleneck=bottleneck), PrefixConfig(length=prefix_length))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: every built-in kind's key (None when absent), plus any other part present."""
        out: dict[str, Any] = {"lora": None, "adapter": None, "prefix": None}
        out.update({name: asdict_since(value, getattr(value, "ADDED_FIELDS", ())) for name, value in self._parts.items()})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PeftConfig":
        _ensure_builtin_kinds()
        def build(name: str, value: dict[str, Any]) -> Any:
            kind = PEFT_CONFIGS[name]
            renamed = getattr(kind, "RENAMED", {})
            return kind(**{renamed.get(k, k): tuple(v) if isinstance(v, list) else v for k, v in value.items()})

        parts = {name: build(name, value) for name, value in d.items() if value is not None}
        parts.setdefault("lora", None)
        return cls(**parts)


def _rebuild(d: dict[str, Any]) -> PeftConfig:
    return PeftConfig.from_dict(d)
