"""Errors of the control plane, one root; the CLI and the admin API map them to exit codes and statuses."""

from __future__ import annotations

__all__ = ["DuplicateError", "NotFoundError", "PoolError", "InvalidInputError"]


class PoolError(Exception):
    """Root of the pool's errors."""


class NotFoundError(PoolError, LookupError):
    """No such source, proxy or user (404 / exit 2)."""


class DuplicateError(PoolError):
    """It exists already (409 / exit 2)."""


class InvalidInputError(PoolError, ValueError):
    """A value the user gave cannot be used (400 / exit 2)."""
