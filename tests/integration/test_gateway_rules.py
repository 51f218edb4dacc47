"""[[gateway.rules]] end to end: refuse (403, HTTP and CONNECT), direct (through no upstream, within
direct_allow), and routing defaults a request's own parameters override."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support.geoip import LOOPBACK_COUNTRIES, build_country_db

pytestmark = pytest.mark.timeout(60)


async def fetch(pool, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    host, port = pool.gateway_address
    async with aiohttp.ClientSession() as client:
        async with client.get(url, proxy=f"http://{host}:{port}", headers=headers or {}) as resp:
            return resp.status, await resp.text()


async def connect_status(pool, target: str) -> bytes:
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    try:
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()


async def test_refuse_and_direct_rules(make_pool, upstreams, origin):
    """localhost is refused (403, CONNECT too); 127.0.0.1 leaves directly (the origin sees the gateway's
    own address, no upstream's)."""
    rules = [{"match": ["localhost", "*.localhost"], "action": "refuse"}, {"match": ["127.0.0.1"], "action": "direct"}]
    pool = await make_pool(
        [u.url() for u in upstreams],
        gateway={"rules": rules, "direct_allow": ["127.0.0.0/8"], "allowed_connect_ports": "*"},
    )
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    status, text = await fetch(pool, f"http://localhost:{origin.port}/echo")
    assert status == 403 and "refused by a gateway rule" in text
    assert (await connect_status(pool, f"localhost:{origin.port}")).startswith(b"HTTP/1.1 403")
    for _ in range(3):
        status, text = await fetch(pool, f"http://127.0.0.1:{origin.port}/echo")
        assert status == 200 and '"peer": "127.0.0.1"' in text, text
    assert (await connect_status(pool, f"127.0.0.1:{origin.port}")).startswith(b"HTTP/1.1 200")


async def test_direct_rule_honours_the_direct_target_refusals(make_pool, upstreams, origin):
    """A direct rule without direct_allow for loopback: the private target is refused like the fallback's."""
    pool = await make_pool([u.url() for u in upstreams], gateway={"rules": [{"match": ["127.0.0.1"], "action": "direct"}]})
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    status, text = await fetch(pool, f"http://127.0.0.1:{origin.port}/echo")
    assert status == 403 and "direct connection" in text


async def test_routing_defaults_apply_unless_the_request_names_its_own(make_pool, upstreams, origin, tmp_path):
    """A rule's country for localhost picks the German exit; the request's own country wins over it."""
    db = build_country_db(tmp_path / "geo.mmdb", LOOPBACK_COUNTRIES)
    pool = await make_pool(
        [u.url() for u in upstreams],
        checker={"geoip_db": str(db)},
        gateway={"rules": [{"match": ["localhost"], "country": "de"}]},
    )
    await pool.wait_until(lambda: pool.selector.active_count == 3 and all(p.country for p in pool.selector.proxies()))
    for _ in range(3):
        status, text = await fetch(pool, f"http://localhost:{origin.port}/echo")
        assert status == 200 and '"peer": "127.0.0.3"' in text
        status, text = await fetch(pool, f"http://localhost:{origin.port}/echo", {"X-Proxy-Pool-Country": "jp"})
        assert status == 200 and '"peer": "127.0.0.4"' in text
    peers = set()
    for _ in range(6):
        peers.add((await fetch(pool, f"http://127.0.0.1:{origin.port}/echo"))[1].split('"peer": "')[1][:9])
    assert peers == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}  # other hosts: no default
