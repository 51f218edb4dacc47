"""``serve --workers N``: N serving processes on one host, sharing the listening sockets.

Each worker is a full replica (``serve`` with ``SO_REUSEPORT`` on the gateway and admin sockets,
named ``NAME/wK`` after the replica name) on the shared database; the kernel spreads connections
over them.  This process only supervises: it forwards SIGINT/SIGTERM, waits for the workers to
drain, and starts a worker again when one dies (its lease is then forfeited, as after any replica's
crash).

On a SQLite file the pool is one ``serve`` as far as anyone else can tell: this process takes the
database's serve lock (a second, unrelated ``serve`` is refused), gives back what a crashed pool left
leased (nobody serves the file yet), announces the admin URL for the CLI, and hands the locked file
to every worker (``--pool-lock FD``), so the lock lasts while any of them lives.  The workers follow
each other's changes through ``pool_changes`` and elect the one that runs the background work with
``DB.leader.lock`` (``pool.dbfiles.LeaderLock``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from config import ConfigError, Settings
from config.settings import parse_host_port
from pool.dbfiles import ServeLock, ServeLockHeld, local_database
from pool.stores import open_store

__all__ = ["run_workers", "worker_argv", "worker_environment"]

log = logging.getLogger("proxy_pool")

RESTART_DELAY = 1.0


_OWN = ("--workers", "--replica-name", "--worker-of", "--pool-lock")  # what the supervisor sets per worker


def _secret_db(argv: list[str]) -> tuple[int, int] | None:
    """Where (first index, count) ``--db`` names a database URL holding a password, if it does."""
    for i, item in enumerate(argv):
        value, count = (argv[i + 1] if i + 1 < len(argv) else "", 2) if item == "--db" else (item[5:], 1)
        if (item == "--db" or item.startswith("--db=")) and "://" in value:
            if "@" in value and ":" in value.split("://", 1)[1].rpartition("@")[0]:
                return i, count
    return None


def worker_environment(argv: list[str], environ: dict[str, str]) -> dict[str, str]:
    """The workers' environment: a ``--db`` URL holding a password goes to them here
    (``PROXY_POOL_STORAGE__URL``, readable by its owner only), never on their command lines, which
    every local user can read in ``/proc``."""
    found = _secret_db(argv)
    if found is None:
        return dict(environ)
    i, count = found
    url = argv[i + 1] if count == 2 else argv[i][5:]
    return {**environ, "PROXY_POOL_STORAGE__URL": url}


def worker_argv(argv: list[str], index: int, base_name: str, pool_lock: int | None = None) -> list[str]:
    """The ``serve`` command line of worker ``index``: without ``--workers``/``--replica-name``, named
    (``pool_lock``: the inherited descriptor of the SQLite file's serve lock), and without a ``--db``
    URL that holds a password (``worker_environment`` carries it)."""
    found = _secret_db(argv)
    if found is not None:
        argv = argv[: found[0]] + argv[found[0] + found[1] :]
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in _OWN:
            skip = True
            continue
        if item.startswith(tuple(f"{flag}=" for flag in _OWN)):
            continue
        out.append(item)
    lock = [] if pool_lock is None else ["--pool-lock", str(pool_lock)]
    return [*out, "--worker-of", str(index), "--replica-name", f"{base_name}/w{index}", *lock]


def _take_sqlite(settings: Settings) -> ServeLock:
    """The SQLite file's serve lock for the whole pool, the file migrated, a crashed pool's leases back."""
    database = local_database(settings.storage)
    if database is None:
        raise ConfigError("--workers needs a database file or PostgreSQL (an in-memory database is one process's)")
    lock = ServeLock(database.absolute())
    try:
        lock.acquire()
    except ServeLockHeld as exc:
        raise ConfigError(str(exc)) from None
    try:
        asyncio.run(_give_back_leases(settings.storage.location))
        lock.announce(*settings.admin.host_port)
    except BaseException:
        lock.release()
        raise
    return lock


async def _give_back_leases(location: str) -> None:
    """No worker runs yet: whatever is leased was left by a crash, and goes back to its users (as a
    single serve's start does); the workers then lease afresh."""
    store = await open_store(location)
    try:
        await store.settle_stale_leases(None, forfeit=False)
    finally:
        await store.close()


def run_workers(args: argparse.Namespace, settings: Settings) -> int:
    host, port = settings.gateway.host_port
    listeners = {"gateway.listen": settings.gateway.listen, "admin.listen": settings.admin.listen,
                 "gateway.socks_listen": settings.gateway.socks_listen,
                 "gateway.intercept_listen": settings.gateway.intercept_listen}
    unfixed = [key for key, value in listeners.items() if value and parse_host_port(value)[1] == 0]
    if unfixed:
        raise ConfigError(f"--workers needs fixed ports (not 0) for {', '.join(unfixed)}: the workers share them")
    base = args.replica_name or f"{socket.gethostname()}:{port}"
    argv: list[str] = list(getattr(args, "argv", None) or sys.argv[1:])
    lock = None if settings.storage.shared else _take_sqlite(settings)
    fds = () if lock is None or lock.fd is None else (lock.fd,)
    commands = [
        [sys.executable, "-m", "gateway", *worker_argv(argv, i, base, fds[0] if fds else None)]
        for i in range(args.workers)
    ]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    procs: list[subprocess.Popen[bytes]] = []
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    env = worker_environment(argv, dict(os.environ))
    try:
        procs.extend(subprocess.Popen(command, pass_fds=fds, env=env) for command in commands)
        log.info("serving with %d workers on %s:%d", len(procs), host, port)
        while not stopping:
            for i, proc in enumerate(procs):
                code = proc.poll()
                if code is not None and not stopping:
                    log.error("worker %d exited with %s; starting it again", i, code)
                    time.sleep(RESTART_DELAY)
                    if not stopping:
                        procs[i] = subprocess.Popen(commands[i], pass_fds=fds, env=env)
            time.sleep(0.2)
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if lock is not None:
            lock.release()
    return 0 if all(code == 0 for code in codes) else 1
