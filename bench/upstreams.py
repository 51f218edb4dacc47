"""Real local upstream proxies and an origin, from Debian packages, for the bench and integration tests.

Each upstream is its own process with its own config file in a temp dir, listens on its own
127.0.0.x and, where the software allows, leaves from that same address (tinyproxy ``Bind``, squid
``tcp_outgoing_address``, microsocks ``-b``, pproxy's ``@in``): an origin that logs or echoes the peer
address tells which upstream carried a request.  Everything stays on 127.0.0.0/8 (squid's resolver
is pointed at 127.0.0.1 so not even a DNS query leaves the machine).

``Services`` owns every process it starts, each in its own process group, and kills them all in
``close()`` (it is a context manager), so an error half-way leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

__all__ = [
    "PPROXY_WRAPPER_ASYNCIO",
    "PPROXY_WRAPPER_UVLOOP",
    "Origin",
    "Service",
    "Services",
    "free_port",
    "have",
    "wait_port",
]


# The pproxy CLI calls uvloop.install() and then asyncio.get_event_loop(), which uvloop's policy refuses
# (no current loop): hide uvloop so pproxy runs on the default asyncio loop ...
PPROXY_WRAPPER_ASYNCIO = (
    "import sys; sys.modules['uvloop'] = None; "
    "from pproxy.server import main; sys.exit(main())"
)
# ... or install uvloop ourselves with a current loop set, then hide it so pproxy keeps that loop.
PPROXY_WRAPPER_UVLOOP = (
    "import sys, asyncio, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "asyncio.set_event_loop(asyncio.new_event_loop()); sys.modules['uvloop'] = None; "
    "from pproxy.server import main; sys.exit(main())"
)

SOFTWARE_BINARIES = {"tinyproxy": "tinyproxy", "squid": "squid", "microsocks": "microsocks", "nginx": "nginx"}


def have(software: str) -> bool:
    """Is the binary of ``software`` installed (PATH or the sbin dirs Debian uses)?"""
    return _binary(SOFTWARE_BINARIES.get(software, software)) is not None


def _binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``host:port`` accepts a connection (the readiness signal of a started server)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


@dataclass
class Service:
    """One started process: what it is, where it listens, where it leaves from."""

    name: str  # e.g. "tinyproxy#1"
    software: str  # tinyproxy | squid | microsocks | pproxy | nginx
    host: str
    port: int
    scheme: str  # http | socks5
    proc: subprocess.Popen[bytes]
    workdir: Path
    exit_host: str | None = None  # the source address of its outgoing connections, if it binds one

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Origin(Service):
    """nginx serving ``/`` (a small page) and ``/big.bin`` (a large file); access log names the peer."""

    small_size: int = 0
    big_size: int = 0
    access_log: Path = field(default_factory=Path)

    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def peers_by_uri(self) -> dict[str, str]:
        """request URI -> peer address, from the access log of ``/big.bin`` downloads."""
        out: dict[str, str] = {}
        if not self.access_log.exists():
            return out
        for line in self.access_log.read_text().splitlines():
            peer, _, uri = line.partition(" ")
            out[uri.strip()] = peer
        return out


class Services:
    """Starts upstreams and an origin as child processes and kills all of them on ``close()``."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, log=None) -> None:  # type: ignore[no-untyped-def]
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="proxy-pool-upstreams-") if root is None else root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.services: list[Service] = []
        self._counts: dict[str, int] = {}
        self._log = log or (lambda msg: None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing -----------------------------------------------------------------------------
    def _workdir(self, software: str) -> tuple[str, Path]:
        n = self._counts.get(software, 0) + 1
        self._counts[software] = n
        path = self.root / f"{software}{n}"
        path.mkdir(parents=True, exist_ok=True)
        # daemons that drop privileges (squid -> proxy, nginx workers -> www-data) must reach it
        os.chmod(self.root, 0o755)
        os.chmod(path, 0o777)
        return f"{software}#{n}", path

    def spawn(self, argv: Sequence[str], workdir: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new process group (so ``close()`` reaches its children), output to files."""
        out = open(workdir / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        finally:
            out.close()
        return proc

    def _started(self, service: Service, timeout: float | None = None) -> Service:
        if timeout is None:  # under valgrind (a prefix) a Python program starts some 50 times slower
            timeout = 15.0 if "valgrind" not in str(service.proc.args) else 300.0
        self.services.append(service)
        try:
            wait_port(service.host, service.port, timeout, service.proc)
        except Exception as exc:
            tail = _tail(service.workdir)
            raise RuntimeError(f"{service.name} did not start: {exc}\n{tail}") from exc
        self._log(f"started {service.name} on {service.host}:{service.port} (pid {service.pid})")
        return service

    def close(self) -> None:
        """Kill every process started here (SIGTERM to its group, SIGKILL after a short grace)."""
        for service in reversed(self.services):
            _kill_group(service.proc, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for service in reversed(self.services):
            try:
                service.proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _kill_group(service.proc, signal.SIGKILL)
            try:
                service.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
        self.services.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # upstreams ----------------------------------------------------------------------------
    def tinyproxy(self, host: str, port: int | None = None) -> Service:
        """tinyproxy on ``host``, leaving from ``host`` (``Bind``); all CONNECT ports allowed."""
        binary = _require("tinyproxy")
        name, work = self._workdir("tinyproxy")
        port = port or free_port(host)
        user = "" if os.geteuid() != 0 else "User nobody\nGroup nogroup\n"
        (work / "tinyproxy.conf").write_text(
            f"{user}"
            f"Port {port}\n"
            f"Listen {host}\n"
            f"Bind {host}\n"
            "Timeout 60\n"
            "MaxClients 1024\n"
            "LogLevel Critical\n"
            f"LogFile \"{work / 'tinyproxy.log'}\"\n"
            f"PidFile \"{work / 'tinyproxy.pid'}\"\n"
            "Allow 127.0.0.0/8\n"
            # no ConnectPort line: CONNECT to any port
        )
        proc = self.spawn([binary, "-d", "-c", str(work / "tinyproxy.conf")], work)
        return self._started(Service(name, "tinyproxy", host, port, "http", proc, work, exit_host=host))

    def squid(self, host: str, port: int | None = None) -> Service:
        """squid on ``host``, leaving from ``host`` (``tcp_outgoing_address``), no cache, no DNS off-box."""
        binary = _require("squid")
        name, work = self._workdir("squid")
        port = port or free_port(host)
        (work / "squid.conf").write_text(
            f"http_port {host}:{port}\n"
            f"tcp_outgoing_address {host}\n"
            "acl loop src 127.0.0.0/8\n"
            "http_access allow loop\n"
            "http_access deny all\n"
            "cache deny all\n"
            "cache_mem 8 MB\n"
            "workers 1\n"
            f"pid_filename {work / 'squid.pid'}\n"
            f"cache_log {work / 'cache.log'}\n"
            "access_log none\n"
            f"coredump_dir {work}\n"
            "visible_hostname proxy-pool-bench\n"
            "dns_nameservers 127.0.0.1\n"
            "pinger_enable off\n"
            "shutdown_lifetime 0 seconds\n"
            "max_filedescriptors 8192\n"
        )
        proc = self.spawn([binary, "-N", "-f", str(work / "squid.conf")], work)
        return self._started(Service(name, "squid", host, port, "http", proc, work, exit_host=host))

    def microsocks(self, host: str, port: int | None = None) -> Service:
        """microsocks (SOCKS5) on ``host``, leaving from ``host`` (``-b``)."""
        binary = _require("microsocks")
        name, work = self._workdir("microsocks")
        port = port or free_port(host)
        proc = self.spawn([binary, "-i", host, "-p", str(port), "-b", host], work)
        return self._started(Service(name, "microsocks", host, port, "socks5", proc, work, exit_host=host))

    def pproxy(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        remotes: Sequence[str] = (),
        *,
        uvloop: bool = False,
        schemes: str = "http",
        leave_from_self: bool = False,
        extra: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> Service:
        """The pproxy CLI in a subprocess (through a wrapper: see ``PPROXY_WRAPPER_*``).

        With ``remotes`` it is a rotating front (``-r URL ... -s rr``) like the gateway; with
        ``leave_from_self`` (and no remotes) an upstream whose outgoing connections leave from ``host``.
        """
        name, work = self._workdir("pproxy-uvloop" if uvloop else "pproxy")
        port = port or free_port(host)
        listen = f"{schemes}://{host}:{port}" + ("/@in" if leave_from_self else "")
        argv = [*prefix, sys.executable, "-c", PPROXY_WRAPPER_UVLOOP if uvloop else PPROXY_WRAPPER_ASYNCIO, "-l", listen]
        for remote in remotes:
            argv += ["-r", remote]
        if remotes:
            argv += ["-s", "rr"]
        argv += list(extra)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = self.spawn(argv, work, env)
        scheme = schemes.split("+")[0]
        return self._started(
            Service(name, "pproxy", host, port, scheme, proc, work, exit_host=host if leave_from_self else None)
        )

    # origin -------------------------------------------------------------------------------
    def nginx(self, host: str = "127.0.0.1", port: int | None = None, *, big_mb: int = 200) -> Origin:
        """nginx serving a small page at ``/`` and ``big_mb`` MB at ``/big.bin`` (peers of it logged)."""
        binary = _require("nginx")
        name, work = self._workdir("nginx")
        port = port or free_port(host)
        www = work / "www"
        www.mkdir(exist_ok=True)
        small = b"<!doctype html><title>proxy-pool bench</title><p>" + b"a" * 160 + b"</p>\n"
        (www / "index.html").write_bytes(small)
        big = www / "big.bin"
        with open(big, "wb") as f:
            f.truncate(big_mb * 1024 * 1024)  # sparse: costs no disk, reads as zeros
        for path in (www, www / "index.html", big):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        access = work / "big-access.log"
        (work / "nginx.conf").write_text(
            "worker_processes 1;\n"
            f"pid {work / 'nginx.pid'};\n"
            f"error_log {work / 'error.log'} warn;\n"
            "events { worker_connections 8192; }\n"
            "http {\n"
            "  log_format peer '$remote_addr $request_uri';\n"
            "  access_log off;\n"
            f"  client_body_temp_path {work / 'tmp/body'};\n"
            f"  proxy_temp_path {work / 'tmp/proxy'};\n"
            f"  fastcgi_temp_path {work / 'tmp/fastcgi'};\n"
            f"  uwsgi_temp_path {work / 'tmp/uwsgi'};\n"
            f"  scgi_temp_path {work / 'tmp/scgi'};\n"
            "  sendfile on;\n"
            "  tcp_nopush on;\n"
            "  keepalive_requests 10000000;\n"
            "  keepalive_timeout 120s;\n"
            "  default_type application/octet-stream;\n"
            "  server {\n"
            f"    listen {host}:{port} backlog=4096;\n"
            f"    root {www};\n"
            "    location = /big.bin {\n"
            f"      access_log {access} peer;\n"
            "    }\n"
            "    location = /post {\n"  # takes a POST body (read and discarded) and answers 200
            "      client_max_body_size 16m;\n"
            "      return 200 \"ok\\n\";\n"
            "    }\n"
            "  }\n"
            "}\n"
        )
        proc = self.spawn([binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"], work)
        origin = Origin(
            name, "nginx", host, port, "http", proc, work,
            small_size=len(small), big_size=big_mb * 1024 * 1024, access_log=access,
        )
        self._started(origin)
        return origin


def _require(name: str) -> str:
    path = _binary(SOFTWARE_BINARIES.get(name, name))
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (Debian package: {name})")
    return path


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _tail(workdir: Path, lines: int = 15) -> str:
    out = []
    for name in ("stdout.log", "cache.log", "error.log", "tinyproxy.log"):
        path = workdir / name
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {name}\n" + "\n".join(text))
    return "\n".join(out)
