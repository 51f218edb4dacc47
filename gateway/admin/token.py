"""The admin API's bearer token: ``admin.token`` when configured, else one generated beside the database.

``serve`` generates it at first start (``DB.admin-token``, mode 0600) and reuses it after; ``proxy-pool
admin-token`` prints it.  The token itself never goes to a log: only the file's path does.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from config import ConfigError, Settings
from config.trust import check_trusted
from pool.dbfiles import local_database, sibling

__all__ = ["NoTokenYet", "ensure_token", "stored_token", "token_file"]


class NoTokenYet(Exception):
    """No token configured and none generated yet (``proxy-pool admin-token`` before the first ``serve``)."""


def token_file(settings: Settings) -> Path | None:
    """Where the generated token lives; None when the store is not a local file."""
    database = local_database(settings.storage)
    return None if database is None else sibling(database.absolute(), ".admin-token")


def stored_token(settings: Settings) -> str:
    """The configured token, else the generated one; NoTokenYet when there is neither."""
    if settings.admin.token is not None:
        return settings.admin.token.get_secret_value()
    path = token_file(settings)
    if path is None:
        raise NoTokenYet("no admin token: set admin.token (the store is not a local file)")
    token = _read(path)
    if token is None:
        raise NoTokenYet(f"no admin token yet: `proxy-pool serve` generates {path} at its first start, or set admin.token")
    return token


def ensure_token(settings: Settings) -> tuple[str, Path | None]:
    """The token ``serve`` requires, and the file it came from (None when configured)."""
    if settings.admin.token is not None:
        return settings.admin.token.get_secret_value(), None
    path = token_file(settings)
    if path is None:
        raise ConfigError("admin.token: required when storage is not a local file (nowhere to keep a generated one)")
    token = _read(path)
    if token is not None:
        return token, path
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # another process wrote it first: use theirs
        existing = _read(path)
        if existing is None:
            raise ConfigError(f"admin token file {path} is empty; remove it or set admin.token") from None
        return existing, path
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    return token, path


def _read(path: Path) -> str | None:
    check_trusted(path, "admin token file", secret=True)  # a file another user planted opens nothing
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"admin token file {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    return text or None
