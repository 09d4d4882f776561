"""Configuration of the Bayesian PEFT parts: small frozen dataclasses that validate themselves.

Example::

    cfg = PeftConfig(lora=LoraConfig(r=8, targets=("query", "value")),
                     adapter=AdapterConfig(bottleneck=16),
                     prefix=PrefixConfig(length=8))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ConfigError", "LoraConfig", "AdapterConfig", "PrefixConfig", "PeftConfig"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and the fix."""


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
    """LoRA: ``y = W x + (alpha / r) * B A x`` on every linear layer whose name ends with a target.

    ``targets`` follow Hugging Face module names (``query``, ``value`` for BERT; ``q_proj``,
    ``v_proj`` for Llama). ``layers`` restricts to transformer blocks by index (None = all).
    """

    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "r", _positive_int(self.r, "LoRA rank r", "r=8"))
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be positive, got {self.alpha}")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        if not self.targets:
            raise ConfigError("LoRA targets is empty; name the linear layers, e.g. ('query', 'value')")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "layers", _check_layers(self.layers, "LoraConfig"))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


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


@dataclass(frozen=True)
class PeftConfig:
    """Which PEFT parts to add; any subset (a hybrid when several are given)."""

    lora: LoraConfig | None = field(default_factory=LoraConfig)
    adapter: AdapterConfig | None = None
    prefix: PrefixConfig | None = None

    def __post_init__(self) -> None:
        for name, kind in (("lora", LoraConfig), ("adapter", AdapterConfig), ("prefix", PrefixConfig)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise ConfigError(f"PeftConfig.{name} must be a {kind.__name__} or None, got {type(value).__name__}")

    @classmethod
    def hybrid(cls, r: int = 8, bottleneck: int = 16, prefix_length: int = 8) -> "PeftConfig":
        """LoRA + Adapter + prefix, the BH-PEFT hybrid."""
        return cls(LoraConfig(r=r), AdapterConfig(bottleneck=bottleneck), PrefixConfig(length=prefix_length))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in ("lora", "adapter", "prefix") if getattr(self, k) is not None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PeftConfig":
        def build(kind, value):
            if value is None:
                return None
            value = dict(value)
            for key in ("targets", "layers"):
                if value.get(key) is not None:
                    value[key] = tuple(value[key])
            return kind(**value)

        return cls(build(LoraConfig, d.get("lora")), build(AdapterConfig, d.get("adapter")),
                   build(PrefixConfig, d.get("prefix")))
