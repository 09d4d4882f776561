"""The library's configuration error, at the bottom of the import graph (config and registries use it)."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and the fix."""
