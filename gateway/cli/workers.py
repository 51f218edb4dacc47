"""``serve --workers N``: N serving processes on one host, sharing the listening sockets.

Each worker is a full replica (``serve`` with ``SO_REUSEPORT`` on the gateway and admin sockets,
named ``NAME/wK`` after the replica name) on the shared PostgreSQL database; the kernel spreads
connections over them.  This process only supervises: it forwards SIGINT/SIGTERM, waits for the
workers to drain, and starts a worker again when one dies (its lease is then forfeited, as after
any replica's crash).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from config import ConfigError, Settings

__all__ = ["run_workers", "worker_argv"]

log = logging.getLogger("proxy_pool")

RESTART_DELAY = 1.0


def worker_argv(argv: list[str], index: int, base_name: str) -> list[str]:
    """The ``serve`` command line of worker ``index``: without ``--workers``/``--replica-name``, named."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--workers", "--replica-name", "--worker-of"):
            skip = True
            continue
        if item.startswith(("--workers=", "--replica-name=", "--worker-of=")):
            continue
        out.append(item)
    return [*out, "--worker-of", str(index), "--replica-name", f"{base_name}/w{index}"]


def run_workers(args: argparse.Namespace, settings: Settings) -> int:
    host, port = settings.gateway.host_port
    if port == 0 or settings.admin.host_port[1] == 0:
        raise ConfigError("--workers needs fixed ports for gateway.listen and admin.listen (not 0)")
    base = args.replica_name or f"{socket.gethostname()}:{port}"
    argv: list[str] = list(getattr(args, "argv", None) or sys.argv[1:])
    commands = [[sys.executable, "-m", "gateway", *worker_argv(argv, i, base)] for i in range(args.workers)]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    procs: list[subprocess.Popen[bytes]] = []
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs.extend(subprocess.Popen(command) for command in commands)
        log.info("serving with %d workers on %s:%d", len(procs), host, port)
        while not stopping:
            for i, proc in enumerate(procs):
                code = proc.poll()
                if code is not None and not stopping:
                    log.error("worker %d exited with %s; starting it again", i, code)
                    time.sleep(RESTART_DELAY)
                    if not stopping:
                        procs[i] = subprocess.Popen(commands[i])
            time.sleep(0.2)
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return 0 if all(code == 0 for code in codes) else 1
