"""/api/stats on real sockets: N dashboards asking at once cost one computation; the answer refreshes
after the interval (an injected clock, no sleeping) and at once after a change made through the API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.admin.routes import STATS, STATS_TTL
from pool.models import ProxyProtocol
from tests.integration.conftest import PoolFactory
from tests.support.admin import admin_session

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_stats_share_one_query_and_refresh_after_the_interval(make_pool: PoolFactory) -> None:
    """Ten requests while the computation (a pass over the pool, the sources query) is held open: one
    computation, ten equal answers.  A source added
    behind the API's back shows only once the interval has passed; one added through the API at once."""
    pool = await make_pool()
    recent = pool.admin_runner.app[STATS]
    clock = recent.clock = Clock()
    real_compute = recent.compute
    queries = 0
    gate = asyncio.Event()

    async def gated() -> Any:
        nonlocal queries
        queries += 1
        await gate.wait()
        return await real_compute()

    recent.compute = gated
    url = "http://%s:%d/api/stats" % pool.admin_address

    async with admin_session(pool) as client:

        async def stats() -> dict[str, Any]:
            async with client.get(url) as resp:
                assert resp.status == 200
                return await resp.json()

        before = recent.computations
        asking = [asyncio.ensure_future(stats()) for _ in range(10)]
        async with asyncio.timeout(20):
            while recent.waiting < 10:
                await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(*asking)
        assert queries == 1 and recent.computations == before + 1
        assert all(a["sources"] == [] for a in answers)

        await pool.store.add_source(
            "http://127.0.0.1:1/behind.txt", parser=None, schedule=None, default_protocol=ProxyProtocol.HTTP, origin="api"
        )
        clock.now += STATS_TTL - 0.1
        assert (await stats())["sources"] == [] and queries == 1  # within the interval: the same answer
        clock.now += 0.2
        assert [s["url"] for s in (await stats())["sources"]] == ["http://127.0.0.1:1/behind.txt"]
        assert queries == 2

        async with client.post(url.replace("/stats", "/sources"), json={"url": "http://127.0.0.1:1/api.txt"}) as resp:
            assert resp.status == 201, await resp.text()
        assert len((await stats())["sources"]) == 2 and queries == 3  # a change through the API: fresh at once
        assert (await stats())["gateway"] is not None and queries == 3
