"""Per-request routing, sticky sessions, ban-aware retry and the direct fallback, end to end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.geoip import LOOPBACK_COUNTRIES, build_country_db

pytestmark = pytest.mark.timeout(60)


def gw(pool) -> str:
    host, port = pool.gateway_address
    return f"http://{host}:{port}"


def basic(user: str, password: str = "x") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def geo_pool(make_pool, upstreams, tmp_path):
    """Three upstreams whose exits map to US, DE and JP in a test GeoIP database."""
    db = build_country_db(tmp_path / "geo.mmdb", LOOPBACK_COUNTRIES)
    pool = await make_pool([u.url() for u in upstreams], checker={"geoip_db": str(db)})
    await pool.wait_until(lambda: pool.selector.active_count == 3 and all(p.country for p in pool.selector.proxies()))
    return pool


async def peers_for(pool, origin, n: int, **request) -> Counter:
    peers: Counter = Counter()
    async with aiohttp.ClientSession() as client:
        for _ in range(n):
            async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(pool), **request) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
                peers[body["peer"]] += 1
                assert not any(k.lower().startswith("x-proxy-pool") for k in body["headers"])
    return peers


async def test_country_from_username_and_header(geo_pool, origin):
    """country-de in the username, or X-Proxy-Pool-Country: jp, picks only matching exits."""
    by_user = await peers_for(geo_pool, origin, 6, headers={"Proxy-Authorization": basic("country-de")})
    assert set(by_user) == {"127.0.0.3"}
    by_header = await peers_for(geo_pool, origin, 6, headers={"X-Proxy-Pool-Country": "jp"})
    assert set(by_header) == {"127.0.0.4"}
    anything = await peers_for(geo_pool, origin, 9)
    assert set(anything) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}


async def test_no_match_names_the_filter(geo_pool, origin):
    """A filter nothing matches gives 503 whose body names it."""
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"http://127.0.0.1:{origin.port}/echo", proxy=gw(geo_pool), headers={"X-Proxy-Pool-Country": "zz"}
        ) as resp:
            assert resp.status == 503
            assert (await resp.text()).strip() == "no active proxy for country=zz"


@pytest.mark.parametrize(
    "headers,needle",
    [
        ({"Proxy-Authorization": basic("colour-red")}, "red"),
        ({"Proxy-Authorization": basic("country-germany")}, "country"),
        ({"Proxy-Authorization": basic("country")}, "country"),
        ({"X-Proxy-Pool-Protocol": "ftp"}, "protocol"),
        ({"X-Proxy-Pool-Anonymity": "stealth"}, "anonymity"),
        ({"X-Proxy-Pool-Colour": "red"}, "Colour"),
    ],
)
async def test_malformed_parameters_get_400_naming_the_part(geo_pool, origin, headers, needle):
    """Unknown or malformed routing parameters: 400 with a line naming the part."""
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(geo_pool), headers=headers) as resp:
            assert resp.status == 400
            assert needle in await resp.text()


async def test_sticky_session_keeps_then_moves(geo_pool, origin, upstreams):
    """A session keeps its upstream; when that one dies the session moves and sticks to the new one."""
    first = await peers_for(geo_pool, origin, 5, headers={"X-Proxy-Pool-Session": "s1"})
    assert len(first) == 1
    host = next(iter(first))
    victim = next(u for u in upstreams if u.host == host)
    await victim.stop()
    geo_pool.gateway.close_idle_upstreams()  # pproxy keeps serving open connections; drop them as a dead host would
    second = await peers_for(geo_pool, origin, 5, headers={"X-Proxy-Pool-Session": "s1"})
    assert len(second) == 1 and host not in second


async def test_keepalive_client_rotates_per_request(make_pool, upstreams, origin):
    """One persistent client connection still leaves through every upstream in turn."""
    pool = await make_pool([u.url() for u in upstreams])
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as client:
        peers = Counter()
        for _ in range(9):
            async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(pool)) as resp:
                peers[(await resp.json())["peer"]] += 1
    assert peers == Counter({u.host: 3 for u in upstreams})


async def test_retry_on_status_rests_upstream_for_that_host_only(make_pool, upstreams):
    """A 429 from one exit is retried elsewhere; that exit rests for that host but serves others."""
    banned = upstreams[0].host

    async def handler(request: web.Request) -> web.Response:
        if request.remote == banned and request.path == "/banned":
            return web.Response(status=429, text="slow down")
        return web.json_response({"peer": request.remote})

    app = web.Application()
    app.router.add_get("/{name}", handler)
    site = TestServer(app, host="127.0.0.1")
    await site.start_server()
    other = TestServer(app, host="localhost")
    await other.start_server()
    try:
        pool = await make_pool(
            [u.url() for u in upstreams], gateway={"retry_on_status": [429], "site_ban_seconds": 300}
        )
        await pool.wait_until(lambda: pool.selector.active_count == 3)
        async with aiohttp.ClientSession() as client:
            seen = Counter()
            for _ in range(9):
                async with client.get(f"http://127.0.0.1:{site.port}/banned", proxy=gw(pool)) as resp:
                    assert resp.status == 200
                    seen[(await resp.json())["peer"]] += 1
            assert banned not in seen
            assert pool.selector.cooldown_count == 1
            # the same upstream still serves another host
            others = Counter()
            for _ in range(6):
                async with client.get(f"http://localhost:{other.port}/fine", proxy=gw(pool)) as resp:
                    others[(await resp.json())["peer"]] += 1
            assert banned in others
    finally:
        await site.close()
        await other.close()


@contextlib.asynccontextmanager
async def banning_site(text: str, hits: list[str] | None = None) -> AsyncIterator[TestServer]:
    """An origin that answers every GET with 403 (a site that banned the whole pool)."""

    async def handler(request: web.Request) -> web.Response:
        if hits is not None:
            hits.append(request.remote or "")
        return web.Response(status=403, text=text)

    app = web.Application()
    app.router.add_get("/", handler)
    site = TestServer(app, host="127.0.0.1")
    await site.start_server()
    try:
        yield site
    finally:
        await site.close()


async def test_retry_on_status_gives_up_after_max_retries(make_pool, upstreams):
    """When every upstream is banned the last answer is passed on rather than looping."""
    async with banning_site("banned everywhere") as site:
        pool = await make_pool([u.url() for u in upstreams], gateway={"retry_on_status": [403], "max_retries": 2})
        await pool.wait_until(lambda: pool.selector.active_count == 3)
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{site.port}/", proxy=gw(pool)) as resp:
                assert resp.status == 403
                assert await resp.text() == "banned everywhere"


async def test_retry_on_status_with_one_upstream_passes_the_answer_on(make_pool, upstreams):
    """One upstream, banned: its own answer goes back (no 502), and later requests to that host still
    leave through it while it rests (no 503, and never the direct fallback from the gateway's own address)."""
    hits: list[str] = []
    async with banning_site("banned here", hits) as site:
        pool = await make_pool(
            [upstreams[0].url()],
            gateway={"retry_on_status": [403], "max_retries": 2, "fallback": "direct", "direct_allow": ["127.0.0.0/8"]},
        )
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.get(f"http://127.0.0.1:{site.port}/", proxy=gw(pool)) as resp:
                    assert resp.status == 403
                    assert await resp.text() == "banned here"
        assert hits == [upstreams[0].host] * 3  # once per request, always through the upstream
        assert pool.selector.cooldown_count == 1


async def test_retry_on_status_passes_the_last_ban_on_when_the_next_upstream_is_dead(make_pool, upstreams):
    """A ban, then a dead upstream: the client gets the real 403, not a 502 about the dead one."""
    from pool.models import Proxy, ProxyStatus, UpstreamURL, utcnow
    from tests.support.upstreams import closed_port

    async with banning_site("banned here") as site:
        dead = f"http://127.0.0.1:{closed_port()}"
        pool = await make_pool(
            [upstreams[0].url()], gateway={"retry_on_status": [403], "max_retries": 3}, pool={"passive_failure_limit": 100}
        )
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        pool.selector.update(  # active in the view, refused on connect
            Proxy(id=900, upstream=UpstreamURL.parse(dead), status=ProxyStatus.ACTIVE, last_checked=utcnow())
        )
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.get(f"http://127.0.0.1:{site.port}/", proxy=gw(pool)) as resp:
                    assert resp.status == 403
                    assert await resp.text() == "banned here"


async def test_non_idempotent_request_is_not_sent_twice(make_pool, upstreams):
    """A POST whose upstream never answers is not re-sent through another upstream (it may have been
    acted on): 504 after one attempt. A GET in the same spot moves on."""
    hits: list[bytes] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):  # reads every request, answers none
            hits.append(head.split(b" ", 1)[0])

    origin = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = origin.sockets[0].getsockname()[1]
    try:
        pool = await make_pool([u.url() for u in upstreams], gateway={"max_retries": 2, "response_timeout": 0.5})
        await pool.wait_until(lambda: pool.selector.active_count == 3)
        async with aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{port}/order", proxy=gw(pool)) as resp:
                assert resp.status == 504
            assert hits == [b"POST"]
            async with client.get(f"http://127.0.0.1:{port}/page", proxy=gw(pool)) as resp:
                assert resp.status == 504
            assert hits == [b"POST"] + [b"GET"] * 3
    finally:
        origin.close()


async def test_direct_fallback_refuses_private_targets(make_pool, origin):
    """fallback = direct dials targets itself but never loopback unless allowed explicitly."""
    pool = await make_pool(gateway={"fallback": "direct"})
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(pool)) as resp:
            assert resp.status == 403
            assert "not allowed" in await resp.text()
    allowed = await make_pool(gateway={"fallback": "direct", "direct_allow": ["127.0.0.0/8"]})
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(allowed)) as resp:
            assert resp.status == 200
            assert (await resp.json())["peer"] == "127.0.0.1"


async def test_upstream_connections_are_reused(make_pool, upstreams, origin):
    """Plain HTTP through an HTTP upstream reuses a pooled upstream connection."""
    pool = await make_pool([upstreams[0].url()])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    connections: list[int] = []
    async with aiohttp.ClientSession() as client:
        for _ in range(5):
            async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(pool)) as resp:
                assert resp.status == 200
            connections.append(pool.gateway.idle_upstream_connections)
    assert connections[-1] >= 1


async def test_stale_pooled_connection_is_retried_fresh(make_pool, origin):
    """An upstream that closes kept-alive connections: the next request still succeeds."""
    from tests.support.grade_proxies import start_grade_proxy

    proxy = await start_grade_proxy("elite", host="127.0.0.6")
    try:
        pool = await make_pool([proxy.url()])
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        async with aiohttp.ClientSession() as client:
            for _ in range(4):
                async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(pool)) as resp:
                    assert resp.status == 200
                # the upstream drops every idle connection between requests (closed for good before the next)
                for writer in list(proxy._writers):
                    writer.close()
                    await writer.wait_closed()
    finally:
        await proxy.stop()


async def test_dead_target_does_not_bench_upstreams(make_pool, upstreams):
    """An upstream answering CONNECT 502/503 (the site is down) is not blamed: nothing gets benched."""
    from tests.support.grade_proxies import start_grade_proxy
    from tests.support.upstreams import closed_port

    proxy = await start_grade_proxy("elite", host="127.0.0.6")  # answers CONNECT to a dead port with 502
    try:
        pool = await make_pool([proxy.url()], gateway={"allowed_connect_ports": "*"}, pool={"passive_failure_limit": 2})
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        dead = closed_port()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            for _ in range(4):
                with pytest.raises(aiohttp.ClientError):
                    async with client.get(f"https://127.0.0.1:{dead}/", proxy=gw(pool)):
                        pass
        assert pool.selector.benched == set()
        assert pool.selector.active_count == 1
    finally:
        await proxy.stop()


async def test_silent_upstream_times_out_and_request_moves_on(make_pool, upstreams, origin, tmp_path):
    """An upstream that opens the tunnel but never answers: after response_timeout the request is
    retried on another upstream (200); when every upstream is silent the answer is 504."""
    import asyncio as _asyncio

    async def silent(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await reader.read()  # swallow the request, never answer

    server = await _asyncio.start_server(silent, "127.0.0.7", 0)
    silent_url = f"http://127.0.0.7:{server.sockets[0].getsockname()[1]}"
    try:
        pool = await make_pool([upstreams[0].url()], gateway={"response_timeout": 0.5})
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        from pool.models import Proxy, ProxyStatus, UpstreamURL, utcnow

        pool.selector.update(
            Proxy(id=900, upstream=UpstreamURL.parse(silent_url), status=ProxyStatus.ACTIVE, last_checked=utcnow())
        )
        async with aiohttp.ClientSession() as client:
            for _ in range(4):
                async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(pool)) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["peer"] == upstreams[0].host
        only_silent = await make_pool(gateway={"response_timeout": 0.5}, storage={"path": str(tmp_path / "other.db")})
        only_silent.selector.update(
            Proxy(id=901, upstream=UpstreamURL.parse(silent_url), status=ProxyStatus.ACTIVE, last_checked=utcnow())
        )
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw(only_silent)) as resp:
                assert resp.status == 504
    finally:
        server.close()
