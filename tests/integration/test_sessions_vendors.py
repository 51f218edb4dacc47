"""Vendors' usernames (Oxylabs, Decodo, Bright Data) through HTTP, CONNECT and SOCKS5, and strict and
soft sessions, end to end: pproxy upstreams leaving from 127.0.0.2-4 (US, DE, JP in a test GeoIP
database), an origin echoing which exit carried each request."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest

from tests.integration.test_socks_clients import http_get_inside, socks5_connect
from tests.support.geoip import LOOPBACK_COUNTRIES, build_country_db

pytestmark = pytest.mark.timeout(60)

VENDORS = {
    "oxylabs": "customer-alice-cc-DE-sessid-v1-sesstime-10",
    "decodo": "user-alice-country-de-session-v2-sessionduration-30",
    "brightdata": "brd-customer-alice-zone-residential-country-de-session-v3",
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def geo_users(make_pool, upstreams, tmp_path):
    """auth = users, user alice; three upstreams whose exits map to US, DE and JP."""
    db = build_country_db(tmp_path / "geo.mmdb", LOOPBACK_COUNTRIES)
    pool = await make_pool(
        [u.url() for u in upstreams],
        checker={"geoip_db": str(db)},
        gateway={"auth": "users", "allowed_connect_ports": "*"},
        credits={"cost_per_request": 1},
    )
    await pool.wait_until(lambda: pool.selector.active_count == 3 and all(p.country for p in pool.selector.proxies()))
    alice = await pool.accounts.add_user("alice", credits=100)
    return pool, alice.password


async def via_http(pool, origin, username: str, password: str) -> dict:
    host, port = pool.gateway_address
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"http://127.0.0.1:{origin.port}/echo",
            proxy=f"http://{host}:{port}",
            headers={"Proxy-Authorization": basic(username, password)},
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def via_connect(pool, origin, username: str, password: str) -> dict:
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    target = f"127.0.0.1:{origin.port}"
    writer.write(
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {basic(username, password)}\r\n\r\n".encode()
    )
    status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    assert status.startswith(b"HTTP/1.1 200"), status
    return await http_get_inside(reader, writer)


async def via_socks5(pool, origin, username: str, password: str) -> dict:
    reader, writer, reply = await socks5_connect(
        pool.gateway_address, "127.0.0.1", origin.port, methods=b"\x02", credentials=(username.encode(), password.encode())
    )
    assert reply[1] == 0, reply
    return await http_get_inside(reader, writer)


@pytest.mark.parametrize("vendor", sorted(VENDORS))
async def test_vendor_spellings_route_through_http_connect_and_socks5(geo_users, origin, vendor):
    """Each vendor's username picks the German exit, keeps its session and charges alice, through an
    HTTP request, a CONNECT tunnel and a SOCKS5 session alike."""
    pool, password = geo_users
    username = VENDORS[vendor]
    before = pool.accounts.balance("alice")
    for how in (via_http, via_connect, via_socks5):
        body = await how(pool, origin, username, password)
        assert body["peer"] == "127.0.0.3", (how.__name__, body)
    session = {"oxylabs": "v1", "decodo": "v2", "brightdata": "v3"}[vendor]
    assert pool.selector.session_upstream(session) == next(p.id for p in pool.selector.proxies() if p.country == "DE")
    assert pool.accounts.balance("alice") == before - 3


async def test_vendor_spelling_with_a_wrong_password_is_407(geo_users, origin):
    """The user is the name inside the vendor's spelling: a wrong password is refused as for ours."""
    pool, _ = geo_users
    host, port = pool.gateway_address
    async with aiohttp.ClientSession() as client:
        async with client.get(
            f"http://127.0.0.1:{origin.port}/echo",
            proxy=f"http://{host}:{port}",
            headers={"Proxy-Authorization": basic(VENDORS["oxylabs"], "wrong")},
        ) as resp:
            assert resp.status == 407


async def session_peer(pool, origin, headers: dict[str, str]) -> tuple[int, str]:
    host, port = pool.gateway_address
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=f"http://{host}:{port}", headers=headers) as resp:
            if resp.status != 200:
                return resp.status, await resp.text()
            return 200, (await resp.json())["peer"]


async def test_strict_session_fails_where_a_soft_one_moves(make_pool, upstreams, origin):
    """Both sessions' upstream stops: the soft session moves to another upstream and sticks there; the
    strict one answers 502 (in the username or as X-Proxy-Pool-Sessmode) and never moves."""
    pool = await make_pool([u.url() for u in upstreams], pool={"passive_failure_limit": 100})
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    # find a strict and a soft session that sit on the same upstream
    status, strict_exit = await session_peer(pool, origin, {"Proxy-Authorization": basic("session-hard-sessmode-strict", "x")})
    assert status == 200
    soft = None
    for i in range(40):
        status, peer = await session_peer(pool, origin, {"X-Proxy-Pool-Session": f"soft{i}"})
        if peer == strict_exit:
            soft = f"soft{i}"
            break
    assert soft is not None
    victim = next(u for u in upstreams if u.host == strict_exit)
    await victim.stop()
    pool.gateway.close_idle_upstreams()
    status, moved = await session_peer(pool, origin, {"X-Proxy-Pool-Session": soft})
    assert status == 200 and moved != strict_exit
    assert await session_peer(pool, origin, {"X-Proxy-Pool-Session": soft}) == (200, moved)
    status, text = await session_peer(pool, origin, {"Proxy-Authorization": basic("session-hard-sessmode-strict", "x")})
    assert status == 502 and "strict" in text, text
    status, text = await session_peer(pool, origin, {"X-Proxy-Pool-Session": "hard", "X-Proxy-Pool-Sessmode": "strict"})
    assert status == 502, text
