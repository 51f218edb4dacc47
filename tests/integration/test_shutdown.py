"""`proxy-pool serve` as a real process: SIGTERM stops accepting, drains, flushes state, exits 0.

Each test runs the real command line in a subprocess against a pproxy upstream and a slow origin,
both in the test's own loop on loopback.  The gateway's addresses come from its "serving" log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pool.tasks import TaskSet
from tests.support.admin import token_beside
from tests.support.replicas import Replica
from tests.support.upstreams import Upstream, start_pproxy

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
FIRST = b"first part;"
REST = b"and the rest of the body, after the test says so."
START_BOUND = 30.0  # seconds: start-up and the first check, bounded, not measured
EXIT_MARGIN = 15.0  # seconds past drain_timeout the process may take to stop


# the slow origin ------------------------------------------------------------------------
@dataclass
class SlowOrigin:
    """An origin whose ``/slow`` sends a first part, then waits for ``release`` to send the rest."""

    server: TestServer
    entered: asyncio.Event
    release: asyncio.Event

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def request(self, path: str, path_kind: str = "fast") -> bytes:
        """A bodiless GET takes the gateway's callback path; a POST with a body its stream path."""
        head = f"http://127.0.0.1:{self.port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if path_kind == "fast":
            return f"GET {head}\r\n".encode()
        return f"POST {head}Content-Length: 5\r\n\r\nhello".encode()


@pytest.fixture
async def slow_origin() -> AsyncIterator[SlowOrigin]:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = len(FIRST) + len(REST)
        await resp.prepare(request)
        await resp.write(FIRST)
        entered.set()
        await release.wait()
        await resp.write(REST)
        return resp

    async def quick(request: web.Request) -> web.Response:
        return web.Response(body=b"quick")

    app = web.Application()
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/quick", quick)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield SlowOrigin(server, entered, release)
    release.set()  # a handler still waiting ends now, so the server closes at once
    await server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await start_pproxy("127.0.0.2", "http")
    yield up
    await up.stop()


# the served process ---------------------------------------------------------------------
@dataclass
class Served(Replica):
    """A ``serve`` on its own SQLite file (``db``): the admin's token file is beside it."""

    db: Path = Path()

    async def wait_active(self, count: int) -> list[dict[str, Any]]:
        """Poll the admin API until ``count`` proxies are active (an external process: bounded polling)."""
        url = f"http://{self.admin[0]}:{self.admin[1]}/api/proxies?status=active"
        headers = token_beside(self.db)  # the admin answers only after the token file is written
        async with aiohttp.ClientSession(headers=headers) as client, asyncio.timeout(START_BOUND):
            while True:
                async with client.get(url) as resp:
                    answer = await resp.json()
                if answer["total"] >= count:
                    return list(answer["proxies"])
                await asyncio.sleep(0.05)

    async def terminate_and_wait(self, drain_timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(drain_timeout + EXIT_MARGIN):
            return await self.proc.wait()


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PROXY_POOL_CHECKER__JUDGES"] = "[]"  # loopback upstreams are judged by the admin's own /judge
    env.update(settings)
    return env


@contextlib.asynccontextmanager
async def serve(
    tmp_path: Path, upstream: Upstream, *, drain_timeout: float, **settings: str
) -> AsyncIterator[Served]:
    """``proxy-pool serve`` on free ports with ``upstream`` as its list, up and with it active."""
    listing = tmp_path / "proxies.txt"
    listing.write_text(upstream.url() + "\n")
    db = tmp_path / "same.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--no-default-sources",
        "--log-format",
        "json",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--db",
        str(db),
        "--proxies",
        str(listing),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=_env(
            PROXY_POOL_GATEWAY__DRAIN_TIMEOUT=str(drain_timeout),
            PROXY_POOL_PLUGINS__CONTRIB_DIR=str(tmp_path / "no-contrib"),
            **settings,
        ),
    )
    served = Served("serve", proc, db=db)
    tasks = TaskSet()
    log_task = tasks.spawn(served.read_log(), name="serve-stderr")
    try:
        serving = tasks.spawn(served.serving.wait(), name="serve-ready")
        async with asyncio.timeout(START_BOUND):  # the "serving" line, or stderr ends (the process died)
            await asyncio.wait({serving, log_task}, return_when=asyncio.FIRST_COMPLETED)
        serving.cancel()
        assert served.serving.is_set(), f"serve did not start:\n{served.messages()}"
        await served.wait_active(1)
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await tasks.wait(5)
        await tasks.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


async def _is_refused_or_closed(host: str, port: int, request: bytes) -> bool:
    """True when a new client gets no service: refused, reset, or closed without an answer."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read() == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        writer.close()


# the scenarios --------------------------------------------------------------------------
@pytest.mark.parametrize("path_kind", ["fast", "stream"])
async def test_sigterm_stops_accepting_and_drains_the_request_in_flight(
    tmp_path, upstream, slow_origin, path_kind
):
    """SIGTERM mid-response: new clients are refused at once, the in-flight answer completes 200, exit 0."""
    drain = 20.0
    async with serve(tmp_path, upstream, drain_timeout=drain) as served:
        reader, writer = await asyncio.open_connection(*served.gateway)
        writer.write(slow_origin.request("/slow", path_kind))
        await writer.drain()
        async with asyncio.timeout(10):
            await slow_origin.entered.wait()
            status, headers = await _read_head(reader)
            assert await reader.readexactly(len(FIRST)) == FIRST

        served.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await served.stopping.wait()
            assert await _is_refused_or_closed(*served.gateway, slow_origin.request("/quick"))
        assert served.proc.returncode is None  # still draining the request in flight

        slow_origin.release.set()
        async with asyncio.timeout(10):
            assert await reader.readexactly(len(REST)) == REST
            assert await reader.read() == b""  # no keep-alive while stopping
        writer.close()
        assert status == 200
        assert int(headers["content-length"]) == len(FIRST) + len(REST)
        async with asyncio.timeout(drain + EXIT_MARGIN):
            assert await served.proc.wait() == 0


@pytest.mark.parametrize("path_kind", ["fast", "stream"])
async def test_sigterm_closes_an_idle_keep_alive_client_without_waiting(
    tmp_path, upstream, slow_origin, path_kind
):
    """An idle keep-alive client is closed on SIGTERM, not waited for: exit 0 long before drain_timeout."""
    drain = 300.0  # far beyond this test's bounds: waiting for the idle client would fail it
    async with serve(
        tmp_path, upstream, drain_timeout=drain, PROXY_POOL_GATEWAY__IDLE_TIMEOUT="300"
    ) as served:
        reader, writer = await asyncio.open_connection(*served.gateway)
        writer.write(slow_origin.request("/quick", path_kind))
        await writer.drain()
        async with asyncio.timeout(10):
            status, headers = await _read_head(reader)
            body = await reader.readexactly(int(headers["content-length"]))
        assert (status, body) == (200, b"quick")
        assert headers.get("connection", "keep-alive").lower() != "close"

        served.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await reader.read() == b""  # the gateway closed the idle connection
            assert await served.proc.wait() == 0
        writer.close()


@pytest.mark.parametrize("path_kind", ["fast", "stream"])
async def test_a_request_that_never_finishes_is_cut_after_drain_timeout(
    tmp_path, upstream, slow_origin, path_kind
):
    """With drain_timeout = 1 an answer that never ends is cut short, and the process still exits 0."""
    async with serve(tmp_path, upstream, drain_timeout=1) as served:
        reader, writer = await asyncio.open_connection(*served.gateway)
        writer.write(slow_origin.request("/slow", path_kind))
        await writer.drain()
        async with asyncio.timeout(10):
            await slow_origin.entered.wait()
            status, _ = await _read_head(reader)
            assert await reader.readexactly(len(FIRST)) == FIRST
        assert status == 200

        served.proc.send_signal(signal.SIGTERM)  # the origin is never released during the test
        async with asyncio.timeout(1 + EXIT_MARGIN):
            rest = await reader.read()
            assert await served.proc.wait() == 0
        writer.close()
        assert rest == b""  # cut: the client never got the rest of the body
        assert not slow_origin.release.is_set()


async def test_clean_stop_leaves_the_checked_pool_in_the_database(tmp_path, upstream, slow_origin):
    """After SIGTERM the database is whole and `proxy-pool proxies` lists the checked proxy as active."""
    async with serve(tmp_path, upstream, drain_timeout=5) as served:
        live = await served.wait_active(1)
        assert await served.terminate_and_wait(5) == 0
    assert [p["url"] for p in live] == [upstream.url()]
    db = served.db
    assert not Path(f"{db}-wal").exists()  # the last connection closed cleanly and checkpointed
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "proxies",
        "--format",
        "json",
        "--db",
        str(db),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=_env(),
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    rows = json.loads(out)
    assert [(r["url"], r["status"]) for r in rows] == [(upstream.url(), "active")]
    assert rows[0]["last_checked"] is not None
    assert rows[0]["latency_ms"] is not None
