"""Files kept beside an embedded database: the generated admin token and the ``serve`` lock.

A store that is not a local file (``:memory:``, a ``postgresql://`` URL) has no "beside": then
``database_file`` is None, no lock is taken (PostgreSQL replicas share one database by design) and the
admin token must be configured.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

__all__ = ["ServeLock", "ServeLockHeld", "database_file", "local_database", "serving_admin", "sibling"]


class ServeLockHeld(Exception):
    """Another ``serve`` holds this database (one line, exit 2)."""


def database_file(location: str) -> Path | None:
    """The local file behind a storage location, or None when it is not one."""
    if location == ":memory:" or "://" in location:
        return None
    return Path(location)


def local_database(storage: Any) -> Path | None:
    """The SQLite file of the ``[storage]`` settings; None for a server database (``storage.url``)."""
    if getattr(storage, "url", None):
        return None
    return database_file(str(storage.path))


def sibling(database: Path, suffix: str) -> Path:
    """``/data/pool.db`` + ``.admin-token`` -> ``/data/pool.db.admin-token``."""
    return database.with_name(database.name + suffix)


class ServeLock:
    """An exclusive ``flock`` on ``DB.serve.lock``, held while ``serve`` runs.

    The kernel drops it when the process dies (kill -9 too), so a stale file never blocks a restart.
    The CLI's other commands do not take it: they work beside a running ``serve`` by design.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = sibling(database, ".serve.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _read_pid(self.path)
            who = f" (pid {holder})" if holder else ""
            raise ServeLockHeld(
                f"database {self.database} is in use by another `proxy-pool serve`{who}; "
                "run one serve per database (or use PostgreSQL for replicas)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def announce(self, admin_url: str) -> None:
        """Write the serving admin API's URL under the pid: the CLI finds a running serve by it."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n{admin_url}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no stale URL for the CLI once this serve is gone
            os.close(self._fd)  # closing drops the lock; the file stays (its removal would race a new holder)
            self._fd = None


def serving_admin(database: Path) -> str | None:
    """The admin URL a running ``serve`` of this database announced, if its process is alive."""
    try:
        lines = sibling(database, ".serve.lock").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    if len(lines) < 2 or not lines[0].strip().isdigit() or not lines[1].startswith("http://"):
        return None
    try:
        os.kill(int(lines[0]), 0)
    except PermissionError:
        pass  # alive, another user's
    except (OSError, OverflowError):
        return None
    return lines[1].strip()


def _read_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").partition("\n")[0].strip()[:20]
    except OSError:
        return ""
