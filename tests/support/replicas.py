"""Real ``proxy-pool serve`` replicas on one PostgreSQL database, ``serve --workers N`` pools, and a
round-robin TCP balancer.

Each replica is the real command line in a subprocess (JSON logs on stderr; its addresses come from
the "serving" line).  A pool of workers is its supervisor's process, whose stderr carries every
worker's lines (each with its pid).  The balancer stands in for HAProxy: it spreads connections over
the replicas and skips one that refuses (a killed replica), as a TCP load balancer with retries does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from pool.tasks import TaskSet
from tests.support.upstreams import free_port
from tests.support.waiting import across_processes

__all__ = [
    "START_BOUND",
    "TOKEN",
    "Balancer",
    "Replica",
    "each_worker",
    "serve_environ",
    "start_replica",
    "start_workers",
    "worker_pids",
]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "replica-test-token"
START_BOUND = 40.0


@dataclass
class Replica:
    name: str
    proc: asyncio.subprocess.Process
    gateway: tuple[str, int] = ("", 0)
    admin: tuple[str, int] = ("", 0)
    lines: list[Any] = field(default_factory=list)
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # its "stopping" line: SIGTERM handled
    tasks: TaskSet = field(default_factory=TaskSet)

    @property
    def proxy_url(self) -> str:
        return f"http://{self.gateway[0]}:{self.gateway[1]}"

    def messages(self) -> str:
        return "\n".join(str(e.get("message", e)) if isinstance(e, dict) else e for e in self.lines)

    async def read_log(self) -> None:
        """Every stderr line, parsed; "serving" gives the addresses, "stopping" marks SIGTERM handled."""
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            text = raw.decode(errors="replace").rstrip()
            try:
                entry: Any = json.loads(text)
            except ValueError:
                entry = text
            self.lines.append(entry)
            message = entry.get("message", "") if isinstance(entry, dict) else ""
            if message.startswith("proxy-pool serving:"):
                self.gateway = _host_port(message.split("gateway ", 1)[1].split(",", 1)[0])
                self.admin = _host_port(message.split("admin ", 1)[1].split(",", 1)[0])
                self.serving.set()
            elif message.startswith("stopping"):
                self.stopping.set()

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = f"http://{self.admin[0]}:{self.admin[1]}{path}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as client, client.request(method, url, json=body, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples matching ``labels`` in this replica's /metrics."""
        _, text = await self.api("GET", "/metrics")
        total = 0.0
        for line in str(text).splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await self.proc.wait()
        await self.tasks.wait(5)
        await self.tasks.close()
        return int(self.proc.returncode or 0)

    async def kill(self) -> None:
        """SIGKILL: no flush, no lease given back.  On Python 3.11 ``wait()`` also waits until every
        holder of the process's stderr pipe has closed it, a ``serve --workers`` pool's orphaned workers
        among them: bounded, so a worker that outlives its supervisor fails the test with its log instead
        of hanging it."""
        if self.proc.returncode is None:
            children = _children(self.proc.pid)
            self.proc.kill()
            try:
                async with asyncio.timeout(KILL_BOUND):
                    await self.proc.wait()
            except TimeoutError:
                alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
                for pid in alive:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                await self.tasks.close()
                raise AssertionError(
                    f"workers {alive} outlived their killed supervisor by {KILL_BOUND:g}s:\n"
                    + self.messages()[-4000:]
                ) from None
        await self.tasks.close()


KILL_BOUND = 45.0  # seconds a killed pool's pipe may stay open (its orphaned workers stopping by themselves)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def serve_environ(cwd: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test ``serve``: this tree's code, the test admin token, no judges (loopback
    upstreams: each replica's own /judge), no contrib plugins, a short drain; none of the caller's
    ``PROXY_POOL_*``; ``env`` on top."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    environ.update(
        {
            "PROXY_POOL_ADMIN__TOKEN": TOKEN,
            "PROXY_POOL_CHECKER__JUDGES": "[]",
            "PROXY_POOL_PLUGINS__CONTRIB_DIR": str(cwd / "no-contrib"),
            "PROXY_POOL_GATEWAY__DRAIN_TIMEOUT": "2",
            **(env or {}),
        }
    )
    return environ


async def start_replica(
    db_url: str,
    name: str,
    cwd: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Replica:
    """One ``serve`` on free ports, sharing ``db_url``, up (its "serving" line read); ``preexec_fn`` runs
    in the child before it starts (resource limits)."""
    environ = serve_environ(cwd, env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--log-format", "json",
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--db", db_url, "--replica-name", name, *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=cwd, env=environ, preexec_fn=preexec_fn,
    )
    replica = Replica(name, proc)
    log_task = replica.tasks.spawn(replica.read_log(), name=f"log-{name}")
    ready = replica.tasks.spawn(replica.serving.wait(), name=f"ready-{name}")
    try:
        async with asyncio.timeout(START_BOUND):
            await asyncio.wait({ready, log_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
    if not replica.serving.is_set():
        await replica.kill()
        raise AssertionError(f"replica {name} did not start:\n{replica.messages()}")
    return replica


async def start_workers(
    db: str, cwd: Path, count: int, *extra: str, env: dict[str, str] | None = None, name: str = "box"
) -> Replica:
    """``serve --workers count`` on ``db`` (fixed free ports, as --workers wants), every worker serving."""
    gateway, admin = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", str(count), "--db", db, "--no-default-sources",
        "--listen", f"127.0.0.1:{gateway}", "--admin-listen", f"127.0.0.1:{admin}", "--replica-name", name,
        "--log-format", "json", *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=cwd, env=serve_environ(cwd, env),
    )
    pool = Replica(name, proc, gateway=("127.0.0.1", gateway), admin=("127.0.0.1", admin))
    pool.tasks.spawn(pool.read_log(), name=f"log-{name}")

    async def all_serving() -> bool:
        return pool.messages().count("proxy-pool serving:") >= count or proc.returncode is not None

    try:
        await across_processes(all_serving, f"{count} workers serving", timeout=START_BOUND)
    except BaseException:
        await pool.kill()
        raise
    if proc.returncode is not None:
        await pool.kill()
        raise AssertionError(f"serve --workers {count} did not start:\n{pool.messages()}")
    return pool


def worker_pids(pool: Replica) -> list[int]:
    """The live workers of a ``serve --workers`` pool: its supervisor's children."""
    return _children(pool.proc.pid)


async def each_worker(pool: Replica, path: str, check: Any, workers: int = 2) -> dict[str, Any]:
    """Poll ``path`` on the pool's shared admin port until every worker's answer passes ``check``; the
    answers by worker name.  Each probe is a new connection (the kernel hands it to either worker) that
    asks ``/api/stats`` for the worker's name, then ``path``, on that one kept-alive connection."""
    names = {f"{pool.name}/w{i}" for i in range(workers)}
    answers: dict[str, Any] = {}
    base = f"http://{pool.admin[0]}:{pool.admin[1]}"

    async def probe() -> bool:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            try:
                async with client.get(base + "/api/stats") as resp:
                    worker = (await resp.json())["replica"]
                async with client.get(base + path) as resp:
                    answer = await resp.json()
            except aiohttp.ClientError:
                return False
        answers[worker] = answer if check(answer) else None
        return set(answers) >= names and all(answers[n] is not None for n in names)

    await across_processes(probe, lambda: f"{path} on every worker of {sorted(names)}: {answers}")
    return answers


class Balancer:
    """Round-robin TCP: each client connection goes to the next replica that accepts it."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._next = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks = TaskSet()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._tasks.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            host, port = self.backends[self._next % len(self.backends)]
            self._next += 1
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection(host, port)
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer), return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
