"""A real PostgreSQL server for tests: initdb + pg_ctl in a temporary directory, on a free port.

Run as root, the server runs as the unprivileged ``postgres`` (or ``nobody``) user through
``runuser``, owning its data directory.  Started once per test session; each test gets a fresh
database (``CREATE DATABASE``), so tests never see each other's rows.

A server is a daemon that outlives a test run killed hard (SIGKILL, a CI timeout), so each directory
names its owner (pid and start time) in ``owner``; ``running_server()`` first reaps the servers of
owners that are gone, and stops its own at a normal end, on SIGINT and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.upstreams import free_port

__all__ = ["PgServer", "find_pg_bin", "missing_reason", "reap_stale", "running_server"]

PREFIX = "proxy-pool-pg-"
OWNER = "owner"  # "<pid> <start time>" of the test process that started the server

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
        self.base = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.base / OWNER).write_text(_identity(os.getpid()) or "")
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._destroyed = False
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
        if self._destroyed:
            return
        self._destroyed = True
        if self.data.exists():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _identity(pid: int) -> str | None:
    """``"<pid> <start time>"`` of a live process, or None: the start time tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime (after comm, which may hold spaces)


def reap_stale(tmp: Path | None = None) -> list[Path]:
    """Stop and remove the servers under ``tmp`` whose owning test process is gone; return their directories.

    A directory without an owner file (being created right now, or made by an older fixture) is left alone."""
    reaped = []
    for base in sorted((tmp or Path(tempfile.gettempdir())).glob(PREFIX + "*")):
        try:
            owner = (base / OWNER).read_text().strip()
        except OSError:
            continue
        if not owner or _identity(int(owner.split()[0])) == owner:
            continue
        data = base / "data"
        if (data / "postmaster.pid").exists() and not _stop_stale(data):
            continue  # still running and not ours to stop: never pull a live server's files away
        shutil.rmtree(base, ignore_errors=True)
        reaped.append(base)
    return reaped


def _stop_stale(data: Path) -> bool:
    """``pg_ctl stop -m immediate`` as the data directory's owner; True once no server runs there."""
    binaries = find_pg_bin()
    if binaries is None:
        return False
    prefix: list[str] = []
    if os.geteuid() == 0 and data.stat().st_uid != 0:
        prefix = ["runuser", "-u", pwd.getpwuid(data.stat().st_uid).pw_name, "--"]
    pg_ctl = [*prefix, str(binaries / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "-m", "immediate", "-w", "-t", "30", "stop"], check=False, capture_output=True, timeout=60, cwd="/")
    status = subprocess.run([*pg_ctl, "status"], check=False, capture_output=True, timeout=60, cwd="/")
    return status.returncode != 0


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """The session's server: stale ones reaped first, this one stopped and removed at the end, on SIGINT
    (KeyboardInterrupt unwinds through here) and on SIGTERM (stopped, then the signal's previous action)."""
    reap_stale()
    server = PgServer()
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # installed outside Python: the default is the closest we can restore
        previous = signal.SIG_DFL

    def on_term(signum: int, frame: object) -> None:
        server.destroy()
        signal.signal(signum, previous)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if signal.getsignal(signal.SIGTERM) is on_term:
            signal.signal(signal.SIGTERM, previous)
        server.destroy()
