"""Failover through the real gateway: failing upstreams are reported and skipped, attempts are capped
by ``max_retries``, and the client gets 502 (reasons, no credentials) or 504 (every attempt timed out).

Failing upstreams are tiny raw servers on loopback that misbehave in one precise way; they are put
into the selector's view directly (as the checker would have left them: active, freshly checked),
because the checker would rightly never mark them active.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.app import ProxyPool
from pool.models import Proxy, ProxyStatus, UpstreamURL, utcnow
from tests.support.grade_proxies import black_hole
from tests.support.upstreams import Upstream, closed_port

pytestmark = pytest.mark.timeout(60)

PoolFactory = Callable[..., Awaitable[ProxyPool]]
Handler = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# raw misbehaving upstreams ---------------------------------------------------------------------


@dataclass
class RawUpstream:
    """A listening socket on its own 127.0.0.x whose connections ``handler`` serves; counts accepts."""

    host: str
    handler: Handler
    port: int = 0
    accepted: int = 0
    received: list[bytes] = field(default_factory=list)  # what the gateway sent (heads, SOCKS requests)
    server: asyncio.AbstractServer | None = field(default=None, repr=False)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                await self.handler(self, reader, writer)
        finally:
            self._writers.discard(writer)
            writer.close()

    def url(self, scheme: str, userinfo: str = "") -> str:
        return f"{scheme}://{userinfo}{self.host}:{self.port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 2)


async def socks5_general_failure(
    up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A SOCKS5 server that takes the greeting, then answers the CONNECT request with 0x01 (general failure)."""
    version, n_methods = await reader.readexactly(2)
    await reader.readexactly(n_methods)
    assert version == 5
    writer.write(b"\x05\x00")  # no authentication
    request = await reader.readexactly(4)  # VER CMD RSV ATYP
    atyp = request[3]
    if atyp == 1:
        rest = await reader.readexactly(4 + 2)
    elif atyp == 3:
        length = (await reader.readexactly(1))[0]
        rest = bytes([length]) + await reader.readexactly(length + 2)
    else:
        rest = await reader.readexactly(16 + 2)
    up.received.append(request + rest)
    writer.write(b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00")
    await writer.drain()


async def http_407(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP proxy that rejects every request (CONNECT or not) with 407, whatever credentials it got."""
    up.received.append(await reader.readuntil(b"\r\n\r\n"))
    writer.write(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="raw"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
    )
    await writer.drain()


async def slam(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, then close at once: a proxy that drops every connection."""


@contextlib.asynccontextmanager
async def raw_upstreams(handler: Handler, hosts: list[str]) -> AsyncIterator[list[RawUpstream]]:
    ups = [await RawUpstream(host, handler).start() for host in hosts]
    try:
        yield ups
    finally:
        for up in ups:
            await up.stop()


# the gateway side ------------------------------------------------------------------------------


def inject(pool: ProxyPool, proxy_id: int, url: str) -> Proxy:
    """Put ``url`` in the selector's view as an active, just-checked upstream (the checker would not)."""
    proxy = Proxy(
        id=proxy_id, upstream=UpstreamURL.parse(url), status=ProxyStatus.ACTIVE, last_checked=utcnow()
    )
    pool.selector.update(proxy)
    return proxy


async def good_pool(make_pool: PoolFactory, good_url: str, **overrides: Any) -> ProxyPool:
    """A pool whose only checked upstream is ``good_url`` (waited for until the checker says active)."""
    pool = await make_pool([good_url], **overrides)
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    return pool


@dataclass
class Answer:
    status: int
    head: bytes
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response with a Content-Length body (every answer of the gateway's own has one)."""
    async with asyncio.timeout(20):
        head = await reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
        body = await reader.readexactly(int(match.group(1))) if match else b""
    return Answer(int(head[9:12]), head, body)


async def request(pool: ProxyPool, raw: bytes) -> Answer:
    """Send one request on a fresh client connection and read the answer."""
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


def get_request(origin: TestServer) -> bytes:
    target = f"127.0.0.1:{origin.port}"
    return f"GET http://{target}/echo HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()


def connect_request(origin: TestServer) -> bytes:
    target = f"127.0.0.1:{origin.port}"
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


async def get_peer(pool: ProxyPool, origin: TestServer) -> str:
    """A plain GET through the gateway; the address the origin saw (which upstream carried it)."""
    answer = await request(pool, get_request(origin))
    assert answer.status == 200, answer
    return _peer(answer.body)


async def connect_peer(pool: ProxyPool, origin: TestServer) -> str:
    """A CONNECT through the gateway, then a GET inside the tunnel; the address the origin saw."""
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    try:
        writer.write(connect_request(origin))
        await writer.drain()
        async with asyncio.timeout(20):
            established = await reader.readuntil(b"\r\n\r\n")
        assert established.startswith(b"HTTP/1.1 200"), established
        writer.write(
            f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await read_answer(reader)
        assert answer.status == 200, answer
        return _peer(answer.body)
    finally:
        writer.close()


def _peer(body: bytes) -> str:
    match = re.search(rb'"peer":\s*"([^"]+)"', body)
    assert match, body
    return match.group(1).decode()


def one_line(answer: Answer) -> str:
    assert answer.body.endswith(b"\n") and answer.body.count(b"\n") == 1, answer.body
    return answer.body.decode()


def failures(pool: ProxyPool) -> dict[str, int]:
    """upstream_failures_total by reason, as /api/stats reports it."""
    return dict(pool.metrics.summary()["upstream_failures"])


# a. a failing SOCKS5 upstream next to a good one ------------------------------------------------


def dials_to(up: RawUpstream, port: int) -> int:
    """SOCKS requests ``up`` received for ``port``: the gateway's dials for the origin, not the
    checker's (a benched proxy is re-checked at once, and that check dials it too)."""
    return sum(1 for request in up.received if int.from_bytes(request[-2:], "big") == port)


@pytest.mark.parametrize("how", ["get", "connect"])
async def test_socks5_failure_is_skipped_and_reported(
    make_pool: PoolFactory, upstreams: list[Upstream], origin: TestServer, how: str
) -> None:
    """Every request succeeds through the good upstream while the SOCKS5 one answering "general
    failure" is tried and each of its failures is counted as a socks_error."""
    good = upstreams[0]
    pool = await good_pool(
        make_pool,
        good.url("socks5"),
        pool={"passive_failure_limit": 100},
        gateway={"allowed_connect_ports": "*"},
    )
    via = get_peer if how == "get" else connect_peer
    async with raw_upstreams(socks5_general_failure, ["127.0.0.7"]) as (bad,):
        inject(pool, 900, bad.url("socks5"))
        for _ in range(6):
            assert await via(pool, origin) == good.host
        tried = dials_to(bad, origin.port)
        assert tried >= 1  # it got as far as the SOCKS request, and was refused there
        assert failures(pool).get("socks_error") == tried
        assert pool.selector._passive_failures.get(900) == tried  # reported to the selector each time


@pytest.mark.parametrize("how", ["get", "connect"])
async def test_failing_socks5_upstream_is_benched(
    make_pool: PoolFactory, upstreams: list[Upstream], origin: TestServer, how: str
) -> None:
    """Later requests keep trying the failing SOCKS5 upstream until passive_failure_limit failures bench
    it; after that the gateway never dials it again (requests still succeed through the good one)."""
    good = upstreams[0]
    pool = await good_pool(
        make_pool,
        good.url("socks5"),
        pool={"passive_failure_limit": 2},
        gateway={"allowed_connect_ports": "*"},
    )
    via = get_peer if how == "get" else connect_peer
    async with raw_upstreams(socks5_general_failure, ["127.0.0.7"]) as (bad,):
        inject(pool, 900, bad.url("socks5"))
        for _ in range(10):
            if 900 in pool.selector.benched:
                break
            assert await via(pool, origin) == good.host
        assert 900 in pool.selector.benched
        assert dials_to(bad, origin.port) == 2
        assert failures(pool).get("socks_error") == 2
        for _ in range(3):
            assert await via(pool, origin) == good.host
        assert dials_to(bad, origin.port) == 2


async def test_plain_http_rotates_over_two_socks5_upstreams(
    make_pool: PoolFactory, upstreams: list[Upstream], origin: TestServer
) -> None:
    """Round robin over two SOCKS5 upstreams uses both for plain HTTP, as it does for CONNECT: the callback
    path hands its pick to the stream path instead of both picking (two turns per request)."""
    pool = await make_pool([u.url("socks5") for u in upstreams[:2]])
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    peers = {await get_peer(pool, origin) for _ in range(6)}
    assert peers == {upstreams[0].host, upstreams[1].host}


async def test_socks5_closed_port_fails_over(
    make_pool: PoolFactory, upstreams: list[Upstream], origin: TestServer
) -> None:
    """A socks5 upstream on a port nothing listens on is refused, reported, and the request moves on."""
    good = upstreams[0]
    pool = await good_pool(make_pool, good.url("socks5"), pool={"passive_failure_limit": 100})
    inject(pool, 900, f"socks5://127.0.0.7:{closed_port('127.0.0.7')}")
    for _ in range(4):
        assert await get_peer(pool, origin) == good.host
    assert failures(pool).get("refused", 0) >= 1


# b. an HTTP upstream answering CONNECT with 407 ------------------------------------------------


async def test_connect_407_fails_over_to_the_good_upstream(
    make_pool: PoolFactory, upstreams: list[Upstream], origin: TestServer
) -> None:
    """CONNECT still opens a tunnel, through the good upstream, while the one answering 407 is tried
    (with its own credentials) and reported as an http_status failure."""
    good = upstreams[0]
    pool = await good_pool(
        make_pool, good.url(), pool={"passive_failure_limit": 100}, gateway={"allowed_connect_ports": "*"}
    )
    async with raw_upstreams(http_407, ["127.0.0.8"]) as (bad,):
        inject(pool, 900, bad.url("http", "user:secretpw@"))
        for _ in range(4):
            assert await connect_peer(pool, origin) == good.host
        assert bad.accepted >= 1
        assert all(head.startswith(b"CONNECT ") for head in bad.received)
        token = base64.b64encode(b"user:secretpw").decode()
        assert all(f"Proxy-Authorization: Basic {token}".encode() in head for head in bad.received)
        assert failures(pool).get("http_status") == bad.accepted


@pytest.mark.parametrize("how", ["get", "connect"])
async def test_only_407_upstreams_give_502_naming_them_without_credentials(
    make_pool: PoolFactory, origin: TestServer, how: str
) -> None:
    """With every upstream answering 407 the client gets one 502 line that names each attempt and the
    407, and never the upstream credentials."""
    pool = await make_pool(gateway={"allowed_connect_ports": "*"}, pool={"passive_failure_limit": 100})
    async with raw_upstreams(http_407, ["127.0.0.8", "127.0.0.9"]) as bads:
        for i, bad in enumerate(bads):
            inject(pool, 900 + i, bad.url("http", f"user{i}:secretpw@"))
        answer = await request(pool, get_request(origin) if how == "get" else connect_request(origin))
        assert answer.status == 502, answer
        body = one_line(answer)
        assert "#900" in body and "#901" in body
        assert "407" in body
        assert "secretpw" not in body and "user0" not in body and "user1" not in body
        assert b"secretpw" not in answer.head
        assert sum(bad.accepted for bad in bads) == 2


# c. max_retries caps the attempts --------------------------------------------------------------

HOSTS = [f"127.0.0.{i}" for i in range(10, 15)]  # five upstreams, each on its own address


@pytest.mark.parametrize("max_retries", [0, 2])
@pytest.mark.parametrize("how", ["get", "connect"])
async def test_max_retries_caps_attempts_on_dropped_connections(
    make_pool: PoolFactory, origin: TestServer, how: str, max_retries: int
) -> None:
    """With five upstreams that accept and drop every connection, one request dials exactly
    max_retries + 1 distinct upstreams (the first try plus max_retries more, as the README says), then 502."""
    pool = await make_pool(
        gateway={"allowed_connect_ports": "*", "max_retries": max_retries},
        pool={"passive_failure_limit": 100},
    )
    pool.selector.on_suspect = None  # count the gateway's dials only, not the re-checks a dropped request asks for
    async with raw_upstreams(slam, HOSTS) as ups:
        for i, up in enumerate(ups):
            inject(pool, 900 + i, up.url("http"))
        answer = await request(pool, get_request(origin) if how == "get" else connect_request(origin))
        assert answer.status == 502, answer
        assert sorted(up.accepted for up in ups) == [0] * (4 - max_retries) + [1] * (max_retries + 1)
        assert one_line(answer).startswith(f"all {max_retries + 1} attempts failed")


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_max_retries_caps_attempts_on_refused_connections(
    make_pool: PoolFactory, origin: TestServer, scheme: str
) -> None:
    """Five upstreams on closed ports, max_retries = 2: the 502 body lists three distinct upstreams."""
    pool = await make_pool(gateway={"max_retries": 2}, pool={"passive_failure_limit": 100})
    for i, host in enumerate(HOSTS):
        inject(pool, 900 + i, f"{scheme}://user:secretpw@{host}:{closed_port(host)}")
    answer = await request(pool, get_request(origin))
    assert answer.status == 502, answer
    body = one_line(answer)
    tried = re.findall(r"upstream #(\d+)", body)
    assert len(tried) == len(set(tried)) == 3, body
    assert body.startswith("all 3 attempts failed")
    assert "secretpw" not in body
    assert failures(pool).get("refused") == 3


# d. 504 when every attempt times out -----------------------------------------------------------


@pytest.mark.parametrize(
    "how,scheme", [("connect", "http"), ("get", "http"), ("connect", "socks5"), ("get", "socks5")]
)
async def test_black_hole_upstreams_give_504(
    make_pool: PoolFactory, origin: TestServer, how: str, scheme: str
) -> None:
    """Upstreams that accept TCP and never answer the handshake: with a small connect_timeout each
    attempt times out and the client gets 504 (not 502), after max_retries + 1 attempts."""
    pool = await make_pool(
        gateway={"allowed_connect_ports": "*", "connect_timeout": 0.3, "max_retries": 1},
        pool={"passive_failure_limit": 100},
    )
    pool.selector.on_suspect = None  # count the gateway's dials only, not the re-checks a CONNECT timeout asks for
    async with black_hole("127.0.0.15") as first, black_hole("127.0.0.16") as second:
        inject(pool, 900, first.url(scheme))
        inject(pool, 901, second.url(scheme))
        answer = await request(pool, get_request(origin) if how == "get" else connect_request(origin))
        assert answer.status == 504, answer
        assert "timed out" in one_line(answer)
        assert first.accepted == 1 and second.accepted == 1
        assert failures(pool).get("timeout") == 2


async def test_black_hole_then_good_upstream_succeeds(
    make_pool: PoolFactory, upstreams: list[Upstream], origin: TestServer
) -> None:
    """A timed-out CONNECT handshake is a failure like any other: the request moves on to a good upstream."""
    good = upstreams[0]
    pool = await good_pool(
        make_pool,
        good.url(),
        # roomy for the good one's handshake; no hedging: each dial to the hole must run into its timeout
        gateway={"allowed_connect_ports": "*", "connect_timeout": 1.0, "hedge_after": "off"},
        pool={"passive_failure_limit": 100},
    )
    pool.selector.on_suspect = None  # count the gateway's dials only, not the re-checks a CONNECT timeout asks for
    async with black_hole("127.0.0.15") as hole:
        inject(pool, 900, hole.url())
        for _ in range(3):
            assert await connect_peer(pool, origin) == good.host
            assert await get_peer(pool, origin) == good.host
        assert hole.accepted >= 1
        assert failures(pool).get("timeout") == hole.accepted
