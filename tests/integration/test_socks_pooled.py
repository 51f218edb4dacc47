"""SOCKS sessions served over pooled upstream connections (gateway.proxy.fixed), on real sockets.

A SOCKS CONNECT whose client speaks everyday HTTP/1.1 inside rides a kept-alive upstream connection
to its target, returned to the pool when the client goes; everything else is relayed raw, byte for
byte, on a connection that never goes back.  Origins here are raw TCP servers that count their
connections and record every byte they get, so "reused" and "never reused" are seen, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from config import Settings
from gateway.proxy.server import GatewayServer
from pool.models import Proxy, ProxyStatus, UpstreamURL
from pool.selector import Selector
from tests.integration.test_socks_clients import socks5_connect
from tests.support.waiting import eventually as wait_for

pytestmark = pytest.mark.timeout(60)
OPEN = {"allowed_connect_ports": "*"}
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Handler = Callable[["RawOrigin", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawOrigin:
    """A TCP origin on 127.0.0.1: counts its connections, records what each one received."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.received: list[bytearray] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        """One request head, recorded; b"" at EOF."""
        if len(self.received) < self.connections:
            self.received.append(bytearray())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        self.received[-1] += head
        return head


async def keep_alive_ok(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 keep-alive: every request head gets "ok" with its length; the Host it saw is echoed."""
    while head := await origin.read_head(reader):
        host = [line for line in head.split(b"\r\n") if line.lower().startswith(b"host:")]
        body = b"ok " + (host[0][5:].strip() if host else b"-")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


@contextlib.asynccontextmanager
async def raw_origin(handler: Handler = keep_alive_ok) -> AsyncIterator[RawOrigin]:
    origin = RawOrigin(handler)
    origin.server = await asyncio.start_server(origin._serve, "127.0.0.1", 0)
    origin.port = origin.server.sockets[0].getsockname()[1]
    try:
        yield origin
    finally:
        origin.server.close()


@contextlib.asynccontextmanager
async def gateway(upstream_url: str, **gw: object) -> AsyncIterator[GatewayServer]:
    """A gateway over one upstream (so every session to a target shares its pool key)."""
    settings = Settings(gateway={"listen": "127.0.0.1:0", "head_timeout": 2.0, **OPEN, **gw})
    selector = Selector()
    selector.load([Proxy(1, UpstreamURL.parse(upstream_url), status=ProxyStatus.ACTIVE)])
    server = GatewayServer(settings, selector)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def session(server: GatewayServer, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer, reply = await socks5_connect(server.address, "127.0.0.1", port)
    assert reply[1] == 0, reply
    return reader, writer


async def get(server: GatewayServer, port: int, host: bytes = b"origin.example", close: bool = True) -> bytes:
    """One SOCKS session, one GET inside; the whole answer as the client got it."""
    reader, writer = await session(server, port)
    connection = b"\r\nConnection: close" if close else b""
    writer.write(b"GET /x HTTP/1.1\r\nHost: %s%s\r\n\r\n" % (host, connection))
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def settled(server: GatewayServer) -> bool:
    return not server._clients  # noqa: SLF001  (the slots, back to baseline)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# reuse -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_sessions_ride_one_upstream_connection_to_their_target(upstreams, scheme):
    """Three SOCKS sessions, one GET each (Connection: close), and a session with three keep-alive GETs:
    the origin sees one connection for all six; the Host header travels as sent, never routes."""
    async with raw_origin() as origin, gateway(upstreams[0].url(scheme)) as server:
        for host in (b"origin.example", b"elsewhere.example", b"127.0.0.1:1"):
            answer = await get(server, origin.port, host)
            assert answer.endswith(b"\r\n\r\nok " + host.split(b":")[0] + (b":1" if b":" in host else b"")), answer
            assert b"Connection: close" in answer
            await wait_for(lambda: settled(server) and server.idle_upstream_connections == 1)
        reader, writer = await session(server, origin.port)
        for _ in range(3):
            writer.write(b"GET /y HTTP/1.1\r\nHost: origin.example\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"keep-alive" in head
            assert await reader.readexactly(len(b"ok origin.example")) == b"ok origin.example"
        writer.close()
        await wait_for(lambda: settled(server) and server.idle_upstream_connections == 1)
        assert origin.connections == 1
        assert bytes(origin.received[0]).count(b"GET /") == 6


async def test_pipelined_and_half_closed_requests_are_answered(upstreams):
    """Two requests in one write get two answers in order; a client that half-closes after its
    request still gets its answer (as through a raw tunnel)."""
    async with raw_origin() as origin, gateway(upstreams[0].url()) as server:
        reader, writer = await session(server, origin.port)
        writer.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.count(b"HTTP/1.1 200 OK") == 2 and answer.index(b"ok a") < answer.index(b"ok b"), answer
        await wait_for(lambda: settled(server))


async def test_request_bodies_inside_a_session_arrive_whole(upstreams, origin):
    """A Content-Length body and a chunked one, inside one SOCKS session after a GET warmed the pool:
    the origin gets every byte (its sha256 says so), and the session's connection is pooled after."""
    import hashlib
    import json

    body = os.urandom(300_000)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 70_000]), body[i : i + 70_000]) for i in range(0, len(body), 70_000))
    async with gateway(upstreams[0].url()) as server:
        reader, writer = await session(server, origin.port)
        requests = [
            b"GET /echo HTTP/1.1\r\nHost: o\r\n\r\n",
            b"POST /body HTTP/1.1\r\nHost: o\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
            b"POST /body HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % chunked,
        ]
        for n, request in enumerate(requests):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answer = json.loads(await reader.readexactly(length))
            if n:
                assert answer["size"] == len(body) and answer["sha256"] == hashlib.sha256(body).hexdigest()
        writer.close()
        await wait_for(lambda: settled(server) and server.idle_upstream_connections >= 1)


# raw relay: whatever is not everyday HTTP/1.1 ----------------------------------------------------


HOSTILE = {
    "tls": b"\x16\x03\x01\x00\x2a" + bytes(range(42)),
    "smuggling": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute form": b"GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n",
    "connect inside": b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "ntlm": b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: NTLM TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    "bare lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "host with a path": b"GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n",
    "leading crlf": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "routing header": b"GET / HTTP/1.1\r\nHost: a\r\nX-Proxy-Pool-Country: de\r\n\r\n",
    "binary": b"\x00\xffSSH-2.0-x\r\n",
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_other_bytes_are_relayed_raw_on_a_connection_never_pooled_again(upstreams, name):
    """A session warms the pool; the next one takes that connection and sends these bytes: they reach the
    origin exactly as sent, right after the first GET on that connection, the origin's answer comes back
    exactly, and that connection never returns to the pool (a third session's GET reaches the origin on
    a new connection)."""
    payload = HOSTILE[name]
    reply = b"RAW ANSWER \x00\xff"

    async def origin_side(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if origin.connections > 1:
            await keep_alive_ok(origin, reader, writer)
            return
        await origin.read_head(reader)
        writer.write(OK)
        await writer.drain()
        origin.received[0] += await reader.readexactly(len(payload))
        writer.write(reply)
        await writer.drain()
        await reader.read()

    async with raw_origin(origin_side) as origin, gateway(upstreams[0].url()) as server:
        assert (await get(server, origin.port)).endswith(b"\r\n\r\nok")
        await wait_for(lambda: settled(server) and server.idle_upstream_connections == 1)
        baseline = fds()
        reader, writer = await session(server, origin.port)
        assert server.idle_upstream_connections == 0  # the session holds it
        writer.write(payload)
        assert await asyncio.wait_for(reader.readexactly(len(reply)), 10) == reply
        writer.close()
        await wait_for(lambda: settled(server))
        assert server.idle_upstream_connections == 0
        first = bytes(origin.received[0])
        assert first.endswith(b"\r\n\r\n" + payload) and first.count(b"GET /x") == 1, first
        assert (await get(server, origin.port)).endswith(b"ok origin.example")
        assert origin.connections == 2  # the hostile connection was not reused
        await wait_for(lambda: settled(server) and fds() <= baseline, lambda: f"{fds()} fds, {baseline} before")


async def test_a_target_that_speaks_first_is_relayed_raw(upstreams):
    """SMTP-like: the target greets before the client says anything; the client gets the banner."""

    async def banner(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.example ESMTP ready\r\n")
        await writer.drain()
        line = await reader.readline()
        writer.write(b"221 bye " + line)
        await writer.drain()

    async with raw_origin(banner) as origin, gateway(upstreams[0].url()) as server:
        reader, writer = await session(server, origin.port)
        assert await asyncio.wait_for(reader.readline(), 10) == b"220 mail.example ESMTP ready\r\n"
        writer.write(b"QUIT\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == b"221 bye QUIT\r\n"
        writer.close()
        await wait_for(lambda: settled(server))
        assert server.idle_upstream_connections == 0


async def test_an_http_connect_to_a_target_that_speaks_first_gets_its_banner(upstreams):
    """The same target through an HTTP client's CONNECT: the banner (often in the same read as the
    upstream's 200) reaches the client, instead of failing the tunnel as unclean."""

    async def banner(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        await reader.read()

    async with raw_origin(banner) as origin, gateway(upstreams[0].url()) as server:
        for _ in range(3):
            reader, writer = await asyncio.open_connection(*server.address)
            writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (origin.port, origin.port))
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.readline(), 10) == b"SSH-2.0-OpenSSH_9.6\r\n"
            writer.close()
        await wait_for(lambda: settled(server))


async def test_a_slow_start_that_is_not_http_goes_raw_at_head_timeout(upstreams):
    """Bytes that could still be a request line but never finish: relayed raw when head_timeout ends."""

    async def echo(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(b"echo " + data)
        await writer.drain()

    async with raw_origin(echo) as origin, gateway(upstreams[0].url(), head_timeout=0.3) as server:
        reader, writer = await session(server, origin.port)
        writer.write(b"HELLO")
        assert await asyncio.wait_for(reader.read(), 10) == b"echo HELLO"
        writer.close()
        await wait_for(lambda: settled(server))
        assert server.idle_upstream_connections == 0


# lying origins and clients that go ---------------------------------------------------------------


LIARS = {
    "over-answers": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    "cuts its body short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
    "breaks its chunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "garbage head": b"HTTP/1.1 2OO OK\r\n\r\n",
}


@pytest.mark.parametrize("name", list(LIARS))
async def test_a_broken_answer_never_leaves_its_connection_in_the_pool(upstreams, name):
    """The origin's first answer is broken: the client gets at most the framed part (never the extra
    answer), and the next session reaches the origin on a new connection."""

    async def liar(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if origin.connections == 1:
            await origin.read_head(reader)
            writer.write(LIARS[name])
            await writer.drain()
            if name == "cuts its body short":
                return  # and closes
            await reader.read()
            return
        await keep_alive_ok(origin, reader, writer)

    async with raw_origin(liar) as origin, gateway(upstreams[0].url()) as server:
        answer = await get(server, origin.port)
        assert b"evil" not in answer
        await wait_for(lambda: settled(server))
        assert server.idle_upstream_connections == 0
        assert (await get(server, origin.port)).endswith(b"ok origin.example")
        assert origin.connections == 2


async def test_a_lying_origin_that_speaks_while_pooled_is_dropped(upstreams):
    """An answer, then bytes nobody asked for while the connection is idle in the pool: never reused."""
    spoke = asyncio.Event()
    dropped = asyncio.Event()

    async def chatty(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if origin.connections == 1:
            await origin.read_head(reader)
            writer.write(OK)
            await writer.drain()
            await spoke.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
            await writer.drain()
            await reader.read()  # the gateway closes it
            dropped.set()
            return
        await keep_alive_ok(origin, reader, writer)

    async with raw_origin(chatty) as origin, gateway(upstreams[0].url()) as server:
        assert (await get(server, origin.port)).endswith(b"\r\n\r\nok")
        await wait_for(lambda: settled(server) and server.idle_upstream_connections == 1)
        spoke.set()
        await asyncio.wait_for(dropped.wait(), 10)
        answer = await get(server, origin.port)
        assert answer.endswith(b"ok origin.example") and b"evil" not in answer
        assert origin.connections == 2


async def test_a_client_closing_mid_answer_frees_everything(upstreams, origin):
    """A client reads the head of an 8 MB answer and goes: its slot, the upstream connection (cut, never
    pooled) and every fd are back to baseline."""
    async with gateway(upstreams[0].url()) as server:
        baseline = fds()
        for _ in range(3):
            reader, writer = await session(server, origin.port)
            writer.write(b"GET /big?size=8388608 HTTP/1.1\r\nHost: origin\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            await reader.readexactly(1000)
            writer.transport.abort()
        await wait_for(lambda: settled(server), lambda: f"clients {server._clients}")  # noqa: SLF001
        assert server.idle_upstream_connections == 0
        await wait_for(lambda: fds() <= baseline, lambda: f"{fds()} fds, {baseline} before")


# one SOCKS connection: one pick, one charge, one count, one log line ------------------------------


async def test_one_charge_one_count_one_log_line_per_socks_connection(make_pool, upstreams, caplog):
    """auth = users and a credit per request: a session with three GETs inside costs one credit, counts
    once with protocol socks5 and logs one SOCKS5-CONNECT line; a sticky session keeps its upstream."""
    async with raw_origin() as origin:
        pool = await make_pool(
            [u.url() for u in upstreams], gateway={**OPEN, "auth": "users"}, credits={"cost_per_request": 1},
            log={"access_log": True},
        )
        caplog.set_level(logging.INFO, logger="proxy_pool.access")
        password = (await pool.accounts.add_user("carol", credits=10)).password.encode()
        await pool.wait_until(lambda: pool.selector.active_count == 3)
        creds = (b"carol-session-k1", password)
        for _ in range(2):
            reader, writer, reply = await socks5_connect(
                pool.gateway_address, "127.0.0.1", origin.port, methods=b"\x02", credentials=creds
            )
            assert reply[1] == 0
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                await asyncio.wait_for(reader.readuntil(b"ok a"), 10)
            writer.close()
        counts = pool.metrics.request_counts
        await wait_for(lambda: counts.get(("CONNECT", "ok", "socks5")) == 2)
        assert pool.accounts.balance("carol") == 8
        lines = [r.getMessage() for r in caplog.records if "SOCKS5-CONNECT" in r.getMessage()]
        assert len(lines) == 2 and all(" carol " in line and " ok " in line for line in lines), lines
        assert origin.connections == 1  # one sticky upstream, one pooled connection for both sessions


async def test_requests_failing_inside_a_session_refund_nothing(make_pool, upstreams):
    """Credits are charged per SOCKS connection and refunded only when its reply fails: a request inside
    that the gateway cannot get answered (the pooled connection and a fresh one both closed unanswered)
    closes the client and mints no credit, however often it is tried."""

    async def first_then_mute(origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if origin.connections == 1:
            await origin.read_head(reader)
            writer.write(OK)
            await writer.drain()
        await origin.read_head(reader)  # and close unanswered

    async with raw_origin(first_then_mute) as origin:
        pool = await make_pool(
            [upstreams[0].url()], gateway={**OPEN, "auth": "users"}, credits={"cost_per_request": 1}
        )
        password = (await pool.accounts.add_user("dave", credits=10)).password.encode()
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        creds = (b"dave", password)
        for n in range(3):
            reader, writer, reply = await socks5_connect(
                pool.gateway_address, "127.0.0.1", origin.port, methods=b"\x02", credentials=creds
            )
            assert reply[1] == 0
            if n == 0:  # warms the pool
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            else:
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 2)
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.endswith(b"ok") if n == 0 else answer == b"", answer
            await wait_for(lambda: settled(pool.gateway))
        assert pool.accounts.balance("dave") == 7


async def test_fresh_tunnels_still_fail_over_before_the_reply(upstreams):
    """Nothing pooled yet and the first upstream down: the reply waits for the next one's tunnel."""
    from tests.support.upstreams import closed_port

    settings = Settings(gateway={"listen": "127.0.0.1:0", "max_retries": 1, **OPEN})
    selector = Selector()
    down = Proxy(1, UpstreamURL.parse(f"http://127.0.0.9:{closed_port('127.0.0.9')}"), status=ProxyStatus.ACTIVE)
    live = Proxy(2, UpstreamURL.parse(upstreams[0].url()), status=ProxyStatus.ACTIVE)
    selector.load([down, live])
    server = GatewayServer(settings, selector)
    await server.start()
    async with raw_origin() as origin:
        try:
            for _ in range(4):
                assert (await get(server, origin.port)).endswith(b"ok origin.example")
            assert origin.connections == 1
        finally:
            await server.stop()
