"""Requests to a dead target never bench healthy upstreams (issue 12, item 4).

The attack: a client sends thousands of requests to a target nobody listens on
(``http://127.0.0.1:1/`` and ``CONNECT 127.0.0.1:1``) through two healthy pproxy upstreams.  pproxy
closes those connections or answers them with an error; before the fix each counted against the
upstream and three of them benched it, so legitimate clients got ``503 no active proxy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.upstreams import pproxy_upstreams

pytestmark = pytest.mark.timeout(90)

DEAD_HTTP = "http://127.0.0.1:1/"
ATTACKS = 600  # each kind: 1200 attacking requests per upstream scheme
ATTACKERS = 6


async def _connect_dead(host: str, port: int) -> bytes:
    """One CONNECT to the dead target; returns the gateway's status line."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_dead_target_benches_no_healthy_upstream(make_pool, origin, scheme):
    """1200 requests to a dead target (plain and CONNECT) through two healthy upstreams, interleaved with
    legitimate ones: every legitimate one gets 200 and no upstream leaves the rotation."""
    async with pproxy_upstreams(2) as ups:
        pool = await make_pool([u.url(scheme) for u in ups], gateway={"allowed_connect_ports": "*", "allowed_http_ports": "*"})
        await pool.wait_until(lambda: pool.selector.active_count == 2)
        gw_host, gw_port = pool.gateway_address
        gw = f"http://{gw_host}:{gw_port}"
        legit_status: list[int] = []
        attack_status: list[str] = []
        done = asyncio.Event()

        async def attacker(n: int) -> None:
            async with aiohttp.ClientSession() as client:
                for i in range(n, ATTACKS * 2, ATTACKERS):
                    if i % 2:
                        line = await _connect_dead(gw_host, gw_port)
                        attack_status.append(line.split(b" ")[1].decode() if line else "closed")
                    else:
                        async with client.get(DEAD_HTTP, proxy=gw) as resp:
                            await resp.read()
                            attack_status.append(str(resp.status))

        async def legit() -> None:
            async with aiohttp.ClientSession() as client:
                while not done.is_set() or len(legit_status) < 50:
                    async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw) as resp:
                        await resp.read()
                        legit_status.append(resp.status)
                    await asyncio.sleep(0)

        async def attack() -> None:
            try:
                await asyncio.gather(*(attacker(n) for n in range(ATTACKERS)))
            finally:
                done.set()

        await asyncio.gather(attack(), legit(), legit())
        assert len(attack_status) == ATTACKS * 2
        print(f"{scheme}: {len(attack_status)} attacking requests, {len(legit_status)} legitimate ones")
        bad = [s for s in legit_status if s != 200]
        assert not bad, f"{len(bad)} of {len(legit_status)} legitimate requests failed: {set(bad)}"
        # pproxy's SOCKS side grants a CONNECT before it dials, then closes the tunnel: a 200, then nothing
        assert set(attack_status) <= {"502", "504", "200"}, set(attack_status)
        assert pool.selector.active_count == 2
        assert not pool.selector.benched


async def test_upstream_failing_one_target_is_rechecked_and_dropped_when_broken(make_pool, origin):
    """An upstream that drops every request looks like one with a dead target; the active re-check its
    first target failure asks for finds it broken and marks it dead, while clients get 200 via the good one."""
    from pool.models import ProxyStatus
    from tests.integration.test_gateway_failover import get_request, inject, raw_upstreams, request, slam

    async with pproxy_upstreams(1) as (good,):
        pool = await make_pool([good.url()])
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        async with raw_upstreams(slam, ["127.0.0.7"]) as (bad,):
            broken = inject(pool, 900, bad.url("http"))
            answer = await request(pool, get_request(origin))
            assert answer.status == 200
            while bad.accepted == 0:  # round robin: the next request tries the broken one first
                assert (await request(pool, get_request(origin))).status == 200
            await pool.wait_until(lambda: broken.status is ProxyStatus.DEAD, timeout=20)
            assert 900 not in pool.selector.benched  # dead by the check's verdict, not by passive health
            for _ in range(4):
                assert (await request(pool, get_request(origin))).status == 200


@contextlib.contextmanager
def black_hole_target() -> Iterator[int]:
    """A port on 127.0.0.1 whose connects hang (a full accept queue drops SYNs): a filtered site."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        hole.close()


async def test_connect_to_a_black_hole_target_benches_no_upstream(make_pool, origin):
    """CONNECTs to a target whose connects hang make healthy upstreams time out waiting for the CONNECT
    answer; that timeout concerns the target: nothing is benched, legitimate requests get 200."""
    with black_hole_target() as port:
        async with pproxy_upstreams(2) as ups:
            pool = await make_pool(
                [u.url() for u in ups], gateway={"allowed_connect_ports": "*", "connect_timeout": 0.5}
            )
            await pool.wait_until(lambda: pool.selector.active_count == 2)
            gw_host, gw_port = pool.gateway_address
            gw = f"http://{gw_host}:{gw_port}"

            async def attack() -> bytes:
                reader, writer = await asyncio.open_connection(gw_host, gw_port)
                try:
                    writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                    return await asyncio.wait_for(reader.readline(), 20)
                finally:
                    writer.close()

            async with aiohttp.ClientSession() as client:
                for _ in range(3):
                    answers = await asyncio.gather(*(attack() for _ in range(3)))
                    assert all(a.split(b" ")[1] in (b"502", b"504") for a in answers), answers
                    async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw) as resp:
                        assert resp.status == 200
            assert not pool.selector.benched and pool.selector.active_count == 2
