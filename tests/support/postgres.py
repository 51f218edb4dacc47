"""A real PostgreSQL server for tests: initdb + pg_ctl in a temporary directory, on a free port.

Run as root, the server runs as the unprivileged ``postgres`` (or ``nobody``) user through
``runuser``, owning its data directory.  Started once per test session; each test gets a fresh
database (``CREATE DATABASE``), so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.upstreams import free_port

__all__ = ["PgServer", "find_pg_bin", "missing_reason"]

_CANDIDATES = [Path("/usr/lib/postgresql/15/bin"), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


def find_pg_bin() -> Path | None:
    for directory in _CANDIDATES:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file() and (directory / "postgres").is_file():
            return directory
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        real = Path(initdb).resolve().parent
        if (real / "postgres").is_file():
            return real
    return None


def missing_reason() -> str | None:
    if find_pg_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's postgresql package"
    if os.geteuid() == 0 and _unprivileged_user() is None:
        return "running as root and no unprivileged 'postgres' or 'nobody' user to run PostgreSQL as"
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class PgServer:
    """One PostgreSQL cluster; ``url(db)`` for a database in it, ``create_database()`` for a fresh one."""

    def __init__(self) -> None:
        binaries = find_pg_bin()
        assert binaries is not None, missing_reason()
        self.bin = binaries
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="proxy-pool-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        if self._user is not None:
            os.chmod(self.base, 0o755)
            os.chown(self.base, self._user.pw_uid, self._user.pw_gid)
        self._names = itertools.count(1)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self._user is not None:
            command = ["runuser", "-u", self._user.pw_name, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60, cwd=self.base)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
            "-E", "UTF8", "--locale", "C",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB"
        )
        result = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30",
            "start", check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()} {log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql,
        )
        return result.stdout.strip()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
