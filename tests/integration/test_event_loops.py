"""The other event loop: the suite runs on asyncio's loop, ``proxy-pool serve`` on uvloop where it is
installed (gateway/eventloop.py).  These round trips run a whole pool on uvloop, so both loops are
tested: checks, keep-alive rotation over HTTP and SOCKS5 upstreams, a body, a CONNECT tunnel."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import ProxyPool
from gateway.eventloop import loop_name
from tests.integration.conftest import pool_settings
from tests.support.upstreams import origin_app, pproxy_upstreams

uvloop = pytest.importorskip("uvloop")

pytestmark = pytest.mark.timeout(60)


async def _round_trips(tmp_path: Path) -> dict[str, object]:
    seen: dict[str, object] = {"loop": loop_name()}
    origin = TestServer(origin_app(), host="127.0.0.1")
    await origin.start_server()
    try:
        async with pproxy_upstreams(2, "http+socks5") as ups:
            urls = [ups[0].url("http"), ups[1].url("socks5")]  # one pool, both kinds
            listing = tmp_path / "list.txt"
            listing.write_text("\n".join(urls) + "\n")
            settings = pool_settings(tmp_path, gateway={"allowed_connect_ports": "*"})
            pool = ProxyPool(settings, extra_sources=[str(listing)])
            await pool.start()
            try:
                await pool.wait_until(lambda: pool.selector.active_count == 2)
                host, port = pool.gateway_address
                gateway = f"http://{host}:{port}"
                peers: Counter[str] = Counter()
                async with (
                    aiohttp.ClientSession() as client
                ):  # one keep-alive connection, rotated per request
                    for _ in range(12):
                        async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gateway) as resp:
                            assert resp.status == 200
                            peers[(await resp.json())["peer"]] += 1
                    body = b"b" * 300_000
                    async with client.post(
                        f"http://127.0.0.1:{origin.port}/body", data=body, proxy=gateway
                    ) as resp:
                        seen["posted"] = (await resp.json())["size"]
                seen["peers"] = dict(peers)
                seen["tunnel"] = await _tunnel(pool.gateway_address, origin.port)
            finally:
                await pool.stop()
    finally:
        await origin.close()
    return seen


async def _tunnel(gateway: tuple[str, int], port: int) -> bytes:
    """CONNECT through the gateway, then a plain GET inside the tunnel; the tunnel's first answer line."""
    reader, writer = await asyncio.open_connection(*gateway)
    try:
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.write(
            f"GET /big?size=1000000 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await reader.read()
        return answer.split(b"\r\n", 1)[0] + b" " + str(len(answer.split(b"\r\n\r\n", 1)[1])).encode()
    finally:
        writer.close()


def test_gateway_round_trips_on_uvloop(tmp_path: Path) -> None:
    seen = uvloop.run(_round_trips(tmp_path))
    assert seen["loop"] == "uvloop"
    assert set(seen["peers"]) == {"127.0.0.2", "127.0.0.3"}  # rotated over the HTTP and the SOCKS5 upstream
    assert sum(seen["peers"].values()) == 12
    assert seen["posted"] == 300_000
    assert seen["tunnel"] == b"HTTP/1.1 200 OK 1000000"


def test_serve_runs_on_uvloop_where_installed() -> None:
    from gateway.eventloop import run

    assert run(_which()) == "uvloop"


async def _which() -> str:
    return loop_name()
