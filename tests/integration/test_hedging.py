"""Hedged requests on real sockets: an upstream that takes requests and never answers, beside a good one.
The answer comes through the good one once ``hedge_after`` passes; the stalled connection is closed
(never pooled), and the gateway's bookkeeping goes back to where it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from pool.models import Proxy, ProxyStatus, UpstreamURL, utcnow
from tests.support.upstreams import start_pproxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


class Stalled:
    """An HTTP proxy that reads each request head and never answers; knows which connections are open."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.9") -> str:
        self.server = await asyncio.start_server(self._serve, host, 0)
        return f"http://{host}:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.read()  # until the gateway closes it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()


@pytest.fixture
async def stalled() -> AsyncIterator[Stalled]:
    s = Stalled()
    await s.start()
    yield s
    await s.stop()


def hedges(pool) -> tuple[float, float]:
    registry = pool.metrics.registry
    return (
        registry.get_sample_value("proxy_pool_gateway_hedges_total") or 0.0,
        registry.get_sample_value("proxy_pool_gateway_hedge_wins_total") or 0.0,
    )


def add_upstream(pool, proxy_id: int, url: str) -> None:
    pool.selector.update(Proxy(id=proxy_id, upstream=UpstreamURL.parse(url), status=ProxyStatus.ACTIVE, last_checked=utcnow()))


async def test_hedge_answers_through_the_other_upstream_and_closes_the_stalled_one(make_pool, stalled, origin):
    good = await start_pproxy("127.0.0.2")
    try:
        pool = await make_pool(None, gateway={"hedge_after": 0.3, "response_timeout": 30.0, "distinct_exit": "off"})
        host, port = stalled.server.sockets[0].getsockname()[:2]
        add_upstream(pool, 899, good.url())
        add_upstream(pool, 900, f"http://{host}:{port}")
        gateway = pool.gateway
        tasks_before, clients_before = len(gateway._tasks), len(gateway._clients)
        gw_host, gw_port = pool.gateway_address
        async with aiohttp.ClientSession() as client:
            for _ in range(4):
                async with client.get(
                    f"http://127.0.0.1:{origin.port}/echo", proxy=f"http://{gw_host}:{gw_port}",
                    timeout=aiohttp.ClientTimeout(total=20),
                ) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["peer"] == "127.0.0.2"
        sent, won = hedges(pool)
        assert stalled.accepted >= 1 and sent >= 1 and won == sent, (stalled.accepted, sent, won)
        await eventually(lambda: stalled.open == 0, "the stalled upstream's connections are closed")
        await eventually(
            lambda: (len(gateway._tasks), len(gateway._clients)) == (tasks_before, clients_before),
            "no task or client slot left behind",
        )
        assert not [key for key in gateway.pool._idle if key[0] == 900], "a stalled connection was pooled"
        assert pool.selector.sites.pair("127.0.0.1", 900).seconds >= 0.3  # it learnt the loser was slow there
    finally:
        await good.stop()


async def test_hedging_off_waits_for_the_first_upstream(make_pool, stalled, origin):
    """hedge_after = "off": a request on the stalled upstream waits for its response_timeout, then moves."""
    good = await start_pproxy("127.0.0.2")
    try:
        pool = await make_pool(None, gateway={"hedge_after": "off", "response_timeout": 1.0, "distinct_exit": "off"})
        host, port = stalled.server.sockets[0].getsockname()[:2]
        add_upstream(pool, 899, good.url())
        add_upstream(pool, 900, f"http://{host}:{port}")
        gw_host, gw_port = pool.gateway_address
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=f"http://{gw_host}:{gw_port}") as resp:
                    assert resp.status == 200
        assert hedges(pool) == (0.0, 0.0)
        assert stalled.accepted >= 1  # a request met it, timed out there and moved on (no second upstream meanwhile)
    finally:
        await good.stop()


async def test_hedge_wins_while_the_first_dial_is_stuck(make_pool, stalled, origin):
    """The first upstream (SOCKS5) never finishes its handshake: the hedge answers, the stuck dial is
    stopped at once (its socket closed, no task left) and starts nothing (a third upstream is never used)."""
    good, tripwire = await start_pproxy("127.0.0.2"), await start_pproxy("127.0.0.3")
    try:
        pool = await make_pool(
            None, gateway={"hedge_after": 0.3, "connect_timeout": 30.0, "distinct_exit": "off", "site_ban_seconds": 0}
        )
        host, port = stalled.server.sockets[0].getsockname()[:2]
        add_upstream(pool, 1, f"socks5://{host}:{port}")
        add_upstream(pool, 2, good.url())
        add_upstream(pool, 3, tripwire.url())
        gateway = pool.gateway
        tasks_before = len(gateway._tasks)
        gw_host, gw_port = pool.gateway_address
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=f"http://{gw_host}:{gw_port}") as resp:
                assert resp.status == 200
                assert (await resp.json())["peer"] == "127.0.0.2"
        assert hedges(pool) == (1.0, 1.0)
        await eventually(lambda: stalled.open == 0 and len(gateway._tasks) == tasks_before, "the stuck dial stopped")
        assert pool.selector.sites.pair("127.0.0.1", 1).seconds >= 0.3  # remembered as slow there
        assert not [key for key in gateway.pool._idle if key[0] in (1, 3)]
    finally:
        await good.stop()
        await tripwire.stop()


async def test_a_first_attempt_failing_hands_over_to_the_racing_hedge(make_pool, stalled, origin):
    """The first upstream drops the request while the hedge is under way: the hedge carries on as the
    request's attempt (no third pick), and its answer goes to the client."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    good, tripwire = await start_pproxy("127.0.0.2"), await start_pproxy("127.0.0.3")
    served: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.remote or "")
        for writer in list(stalled.writers):  # the hedge's request arrived: the first upstream drops its own
            writer.transport.abort()
        await eventually(lambda: hedges(pool)[1] == 1.0, "the hedge took over")
        return web.json_response({"peer": request.remote})

    app = web.Application()
    app.router.add_get("/", handler)
    site = TestServer(app, host="127.0.0.1")
    await site.start_server()
    try:
        pool = await make_pool(None, gateway={"hedge_after": 0.3, "distinct_exit": "off", "site_ban_seconds": 0})
        host, port = stalled.server.sockets[0].getsockname()[:2]
        add_upstream(pool, 1, f"http://{host}:{port}")
        add_upstream(pool, 2, good.url())
        add_upstream(pool, 3, tripwire.url())
        gw_host, gw_port = pool.gateway_address
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{site.port}/", proxy=f"http://{gw_host}:{gw_port}") as resp:
                assert resp.status == 200
                assert (await resp.json())["peer"] == "127.0.0.2"
        assert served == ["127.0.0.2"]  # the tripwire upstream never carried it
        assert hedges(pool) == (1.0, 1.0)
    finally:
        await site.close()
        await good.stop()
        await tripwire.stop()


async def test_a_banned_hedge_moves_on_to_a_third_upstream_while_the_first_stalls(make_pool, stalled):
    """The first upstream stalls, the hedge's exit is banned by the site (403): the ban is not passed on
    and the request does not wait on the stall either: another hedge goes out at once through a third
    upstream (within max_retries), whose answer the client gets long before response_timeout."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    banned, good = await start_pproxy("127.0.0.3"), await start_pproxy("127.0.0.2")
    served: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.remote or "")
        if request.remote == "127.0.0.3":
            return web.Response(status=403, text="banned")
        return web.json_response({"peer": request.remote})

    app = web.Application()
    app.router.add_get("/", handler)
    site = TestServer(app, host="127.0.0.1")
    await site.start_server()
    try:
        pool = await make_pool(
            None,
            gateway={
                "hedge_after": 0.3, "response_timeout": 30.0, "connect_timeout": 30.0, "distinct_exit": "off",
                "retry_on_status": [403],
            },
        )
        host, port = stalled.server.sockets[0].getsockname()[:2]
        add_upstream(pool, 1, f"http://{host}:{port}")  # picked first (round robin), then 2 hedges, then 3
        add_upstream(pool, 2, banned.url())
        add_upstream(pool, 3, good.url())
        gw_host, gw_port = pool.gateway_address
        async with aiohttp.ClientSession() as client, client.get(
            f"http://127.0.0.1:{site.port}/", proxy=f"http://{gw_host}:{gw_port}",
            timeout=aiohttp.ClientTimeout(total=15),  # the stall would hold it for 30 s
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["peer"] == "127.0.0.2"
        sent, won = hedges(pool)
        assert served == ["127.0.0.3", "127.0.0.2"]
        assert stalled.accepted == 1
        assert (sent, won) == (2.0, 1.0)
        assert pool.selector.sites.resting("127.0.0.1", 2, pool.selector._clock())  # the ban was learnt
        await eventually(lambda: stalled.open == 0, "the stalled attempt is closed once the hedge won")
    finally:
        await site.close()
        await banned.stop()
        await good.stop()
