"""Dashboard logout across the workers of ``serve --workers 2`` (one PostgreSQL database, one admin port):
the session ends on the worker that did not serve the logout too, at its very next request."""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from gateway.admin.sessions import COOKIE
from tests.support.replicas import TOKEN, serve_environ
from tests.support.waiting import eventually
from tests.support.upstreams import free_port

pytestmark = pytest.mark.timeout(120)


async def test_a_logout_on_one_worker_ends_the_session_on_the_other(pg_url: str, tmp_path: Path) -> None:
    """Two kept-alive client connections, one on each worker (told apart by /api/stats "replica"), carry
    one session cookie; the logout goes over the first: both workers refuse the cookie from then on
    (401), while the second connection is still on its worker and the bearer token still works."""
    admin_port = free_port()
    environ = serve_environ(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--workers", "2", "--db", pg_url, "--no-default-sources",
        "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{admin_port}", "--replica-name", "box",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        cwd=tmp_path, env=environ,
    )
    base = f"http://127.0.0.1:{admin_port}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with AsyncExitStack() as stack:

            async def replica(client: aiohttp.ClientSession, headers: dict[str, str]) -> tuple[int, str | None]:
                async with client.get(f"{base}/api/stats", headers=headers) as resp:
                    return resp.status, (await resp.json()).get("replica")

            async def logged_in() -> str | None:
                try:
                    async with aiohttp.ClientSession() as client:
                        async with client.post(f"{base}/login", json={"token": TOKEN}) as resp:
                            return resp.cookies[COOKIE].value if resp.status == 204 else None
                except aiohttp.ClientError:
                    return None

            cookie = ""

            async def login() -> bool:
                nonlocal cookie
                cookie = await logged_in() or ""
                return bool(cookie)

            await eventually(login, "serve --workers 2 answering a login", 60.0, interval=0.05)
            with_cookie = {"Cookie": f"{COOKIE}={cookie}"}
            on: dict[str, aiohttp.ClientSession] = {}

            async def one_connection_per_worker() -> bool:
                # a new client is a new connection, which the kernel hands to either worker (SO_REUSEPORT)
                client = await stack.enter_async_context(
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), cookie_jar=aiohttp.DummyCookieJar())
                )
                try:
                    status, name = await replica(client, with_cookie)
                except aiohttp.ClientError:
                    return False
                assert status == 200
                if name is not None and name not in on:
                    on[name] = client
                return set(on) == {"box/w0", "box/w1"}

            await eventually(one_connection_per_worker, "a kept-alive connection on each worker", 60.0, interval=0.05)
            first, second = on["box/w0"], on["box/w1"]
            assert await replica(second, with_cookie) == (200, "box/w1")
            async with first.post(f"{base}/logout", headers=with_cookie) as resp:
                assert resp.status == 204
            for client in (second, first):
                async with client.get(f"{base}/api/stats", headers=with_cookie) as resp:
                    assert resp.status == 401
                async with client.get(f"{base}/", headers=with_cookie) as resp:
                    assert 'id="login-form"' in await resp.text()  # the page is the login form again
            assert await replica(second, bearer) == (200, "box/w1")  # still that worker's connection
            assert await replica(first, bearer) == (200, "box/w0")
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
