"""The configuration's error type, apart so that every config module can raise it without a circle."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A configuration mistake: reported as one line, exit code 2."""
