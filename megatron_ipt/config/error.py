"""The one error type of the config system: a file, key or value that does not fit."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that does not fit the config's dataclasses."""
