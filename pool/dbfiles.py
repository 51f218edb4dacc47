"""Files kept beside an embedded database: the generated admin token, the ``serve`` lock and the
leader lock of ``serve --workers N``.

A store that is not a local file (``:memory:``, a ``postgresql://`` URL) has no "beside": then
``database_file`` is None, no lock is taken (PostgreSQL replicas share one database by design) and the
admin token must be configured.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

__all__ = [
    "DATABASE_SUFFIXES",
    "LeaderLock",
    "ServeLock",
    "ServeLockHeld",
    "database_file",
    "local_database",
    "make_private",
    "serving_admin",
    "sibling",
]


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


DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # SQLite's own files beside the database


def make_private(database: Path) -> None:
    """The database file 0600 before SQLite opens it (SQLite gives ``-wal``, ``-shm`` and ``-journal``
    the database's mode): it holds upstream passwords and source API keys.  A file of ours left
    readable by others (by an older version) is tightened; another user's file is left alone."""
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    for suffix in DATABASE_SUFFIXES:
        path = sibling(database, suffix)
        try:
            st = os.stat(path)
            if st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.chmod(path, 0o600)
        except OSError:
            continue


def sibling(database: Path, suffix: str) -> Path:
    """``/data/pool.db`` + ``.admin-token`` -> ``/data/pool.db.admin-token``."""
    return database.with_name(database.name + suffix)


class ServeLock:
    """An exclusive ``flock`` on ``DB.serve.lock``, held while one pool serves the file: one ``serve``,
    or the supervisor of ``serve --workers N`` and its workers, which inherit its open file (``fd``,
    ``adopt``): a ``flock`` belongs to the open file, so the pool holds it while any of them lives.

    The kernel drops it when the last holder dies (kill -9 too), so a stale file never blocks a restart.
    The CLI's other commands do not take it: they work beside a running ``serve`` by design.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = sibling(database, ".serve.lock")
        self._fd: int | None = None
        self._adopted = False

    @property
    def fd(self) -> int | None:
        """The locked file's descriptor (the supervisor passes it to its workers)."""
        return self._fd

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
                "run one serve per database (`serve --workers N` for more cores, PostgreSQL for replicas)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def adopt(self, fd: int) -> None:
        """A worker's start: ``fd`` is this lock file, opened and locked by its supervisor (inherited)."""
        try:
            mine, there = os.fstat(fd), os.stat(self.path)
            same = (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)
            if same:  # the lock of our own open file: granted again at once; anyone else's: refused
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            same = False
        if not same:
            raise ServeLockHeld(f"database {self.database}: this worker's supervisor does not hold its serve lock")
        os.set_inheritable(fd, False)  # no process this worker starts keeps the pool's lock alive
        self._fd = fd
        self._adopted = True

    def announce(self, host: str, port: int) -> None:
        """Write the serving admin API's URL under the pid: the CLI finds a running serve by it (a
        pool's supervisor announces it for its workers).  A wildcard address as a client here dials it."""
        if self._fd is not None and not self._adopted:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            text = f"{os.getpid()}\nhttp://{netloc}\n".encode()
            os.pwrite(self._fd, text, 0)
            os.ftruncate(self._fd, len(text))

    def release(self) -> None:
        if self._fd is not None:
            if not self._adopted:  # a worker leaves the pool's announcement to the others
                os.ftruncate(self._fd, 0)  # no stale URL for the CLI once this serve is gone
            os.close(self._fd)  # closing drops the lock; the file stays (its removal would race a new holder)
            self._fd = None


class LeaderLock:
    """``DB.leader.lock``: the one worker of a pool on a SQLite file that runs the background work
    (scraping, checks, the pool's passes) holds this ``flock``; the kernel drops it when that worker
    dies (kill -9 too), and the next worker that tries takes it over."""

    def __init__(self, database: Path) -> None:
        self.path = sibling(database, ".leader.lock")
        self._fd: int | None = None
        self.held = False

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (never waits); whether this process holds it now."""
        if self.held:
            return True
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        text = f"{os.getpid()}\n".encode()
        os.pwrite(self._fd, text, 0)
        os.ftruncate(self._fd, len(text))
        self.held = True
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.held = False


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
