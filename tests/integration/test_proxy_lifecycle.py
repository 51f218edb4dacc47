"""Proxies through their life: listed while checked, re-checked now, removed (admin API).

Real pproxy upstreams, and a black-hole TCP server for a proxy whose check never ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import ProxyPool
from pool.models import ProxyStatus
from tests.integration.test_users_credits import admin_url
from tests.support.admin import admin_session

pytestmark = pytest.mark.timeout(90)


async def api(method: str, pool: ProxyPool, path: str, body: Any = None) -> tuple[int, Any]:
    async with admin_session(pool) as client, client.request(method, admin_url(pool, path), json=body) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """A TCP port that accepts and never answers: a proxy whose check lasts until the checker's timeout."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.3", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_proxy_being_checked_is_listed(make_pool, upstreams, black_hole):
    """While its first check runs, a scraped proxy is in /api/proxies (status new) and in the stats."""
    pool = await make_pool(
        [upstreams[0].url("http"), f"http://127.0.0.3:{black_hole}"], checker={"timeout": 20.0, "judges": []}
    )
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    assert pool.pipeline.backlog == 1  # the black hole is still being checked
    status, listing = await api("GET", pool, "/api/proxies")
    assert status == 200 and listing["total"] == 2
    assert sorted(p["status"] for p in listing["proxies"]) == ["active", "new"]
    assert (await api("GET", pool, "/api/proxies?status=new"))[1]["total"] == 1
    stats = (await api("GET", pool, "/api/stats"))[1]
    assert stats["pool"]["by_status"] == {"active": 1, "new": 1}


async def test_recheck_and_remove_through_the_api(make_pool, upstreams):
    """A re-check applies its verdict at once (a stopped upstream is dead); a removed proxy leaves pool and store."""
    pool = await make_pool([upstreams[0].url("http"), upstreams[1].url("http")])
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    doomed = next(p for p in pool.selector.proxies() if p.port == upstreams[1].port)
    await upstreams[1].stop()
    status, answer = await api("POST", pool, f"/api/proxies/{doomed.id}/recheck")
    assert status == 200, answer
    assert answer["proxy"]["status"] == "dead" and answer["failed_check"]
    assert pool.selector.active_count == 1
    await pool.pipeline.flush()
    assert (await pool.store.get_proxy(doomed.id)).status is ProxyStatus.DEAD
    for method, path, code in (
        ("POST", "/api/proxies/999999/recheck", 404),
        ("POST", "/api/proxies/x/recheck", 400),
        ("DELETE", "/api/proxies/999999", 404),
        ("DELETE", "/api/proxies/x", 400),
    ):
        got, answer = await api(method, pool, path)
        assert got == code and "error" in answer, (method, path)
    assert len(pool.selector) == 2  # bad input changed nothing
    assert await api("DELETE", pool, f"/api/proxies/{doomed.id}") == (200, {"deleted": doomed.id})
    assert pool.selector.get(doomed.id) is None
    assert doomed.id not in [p["id"] for p in (await api("GET", pool, "/api/proxies"))[1]["proxies"]]
    assert (await api("GET", pool, f"/api/proxies/{doomed.id}/checks"))[0] == 404
    assert (await api("DELETE", pool, f"/api/proxies/{doomed.id}"))[0] == 404
