"""The keep-alive upstream ``ConnectionPool`` and its ``UpstreamConnection`` states: caps, idle expiry,
pruning, reuse, and the connections never reused (spoke while idle, answer not ending at its framing).

Connections are real TCP sockets to a small keep-alive HTTP server on loopback, dialled as the gateway
dials an HTTP upstream, so "reused" means the server saw no new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.proxy import fasthead, http1
from gateway.proxy.connection import ConnectionPool, ConnState, UpstreamConnection
from pool.models import UpstreamURL
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(30)

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


@dataclass
class KeepAliveServer:
    """Answers every request head with a tiny 200 and keeps the connection; counts what it sees."""

    host: str = "127.0.0.1"
    port: int = 0
    accepted: int = 0
    requests: int = 0
    server: asyncio.AbstractServer | None = field(default=None, repr=False)
    writers: list[asyncio.StreamWriter] = field(default_factory=list, repr=False)

    async def start(self) -> KeepAliveServer:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                writer.write(ANSWER)
                await writer.drain()

    @property
    def url(self) -> UpstreamURL:
        return UpstreamURL.parse(f"http://{self.host}:{self.port}")

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 2)


@pytest.fixture
async def server() -> AsyncIterator[KeepAliveServer]:
    srv = await KeepAliveServer().start()
    yield srv
    await srv.stop()


class Collector:
    """A receiver that keeps what the connection relays and says when the answer ended."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def plain_head(self, data: bytes, plain: fasthead.PlainResponse) -> bytes | None:
        return data[: plain.end]

    def response_head(self, resp: http1.ResponseHead, framing: http1.FramingKind) -> bytes | None:
        return http1.forward_response_head(resp, keep_alive=True)

    def relay(self, data: bytes, body_bytes: int) -> None:
        self.data += data

    def _end(self, how: str) -> None:
        if not self.ended.done():
            self.ended.set_result(how)

    def done(self) -> None:
        self._end("done")

    def cut_short(self) -> None:
        self._end("cut")

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        self._end("lost")

    def upstream_failed(self, conn: UpstreamConnection, message: str) -> None:
        self._end("failed")

    def timed_out(self, conn: UpstreamConnection) -> None:
        self._end("timeout")

    def writable(self) -> None:
        pass


async def dial(server: KeepAliveServer, pool: ConnectionPool, key: object = "a") -> UpstreamConnection:
    """A fresh connection, opened the way the gateway opens one to an HTTP upstream."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: UpstreamConnection(loop, key, 65536, pool), server.host, server.port)
    return conn


async def roundtrip(conn: UpstreamConnection) -> bytes:
    """One request and its whole answer on ``conn`` (back in its pool afterwards when it can be)."""
    collector = Collector()
    conn.send(collector, "GET", b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 5.0, 5.0)
    assert await asyncio.wait_for(collector.ended, 5) == "done"
    return collector.data


async def idle_in(pool: ConnectionPool, *conns: UpstreamConnection) -> None:
    """Each connection carried one request and went back to ``pool``."""
    for conn in conns:
        await roundtrip(conn)
        assert conn.state is ConnState.IDLE


async def peer_closed(conn: UpstreamConnection) -> None:
    """Wait for the close the server's EOF brings (a real signal, not a guess)."""
    await eventually(lambda: conn.state is ConnState.CLOSED)


def closed(conn: UpstreamConnection) -> bool:
    return conn.state is ConnState.CLOSED


async def test_second_request_reuses_the_same_connection(server: KeepAliveServer) -> None:
    """A connection whose answer ended at its framing goes back IDLE, comes back from acquire and carries
    the next request: one accept, two requests."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0)
    assert pool.acquire("a") is None
    conn = await dial(server, pool)
    assert conn.state is ConnState.NEW
    assert (await roundtrip(conn)).startswith(b"HTTP/1.1 200")
    assert conn.state is ConnState.IDLE and len(pool) == 1

    again = pool.acquire("a")
    assert again is conn
    assert again.uses == 1  # it has served before: the gateway treats it as possibly stale
    assert len(pool) == 0
    assert (await roundtrip(again)).startswith(b"HTTP/1.1 200")
    assert again.uses == 2
    assert server.accepted == 1 and server.requests == 2
    assert "IDLE" in repr(again)
    pool.close()
    assert closed(again)


async def test_keys_are_separate(server: KeepAliveServer) -> None:
    """A connection kept for one upstream and target is never handed out for another."""
    pool = ConnectionPool()
    conn = await dial(server, pool, key=(1, "a.example", 80, False))
    await idle_in(pool, conn)
    assert pool.acquire((1, "b.example", 80, False)) is None
    assert pool.acquire((1, "a.example", 80, False)) is conn
    conn.close()


async def test_per_key_cap_closes_the_oldest(server: KeepAliveServer) -> None:
    """Past per_key idle connections for one key, the oldest is closed; other keys keep their own."""
    pool = ConnectionPool(per_key=2, idle_timeout=30.0)
    first, second, third = [await dial(server, pool) for _ in range(3)]
    await idle_in(pool, first, second, third)
    assert len(pool) == 2
    assert closed(first) and not closed(second) and not closed(third)

    other = await dial(server, pool, key="b")
    await idle_in(pool, other)
    assert len(pool) == 3  # the cap is per key
    assert pool.acquire("a") is third  # newest first
    assert pool.acquire("a") is second
    assert pool.acquire("a") is None
    assert pool.acquire("b") is other
    for conn in (second, third, other):
        conn.close()


async def test_per_key_zero_keeps_nothing(server: KeepAliveServer) -> None:
    """upstream_pool_size = 0 turns keep-alive off: a finished connection is closed at once."""
    pool = ConnectionPool(per_key=0)
    conn = await dial(server, pool)
    await roundtrip(conn)
    assert len(pool) == 0 and closed(conn)
    assert pool.acquire("a") is None


async def test_global_cap_evicts_from_the_least_recently_used_key(server: KeepAliveServer) -> None:
    """max_total bounds idle sockets whatever the number of keys; eviction starts at the stalest key."""
    pool = ConnectionPool(per_key=10, idle_timeout=30.0, max_total=3)
    a1, a2 = [await dial(server, pool, "a") for _ in range(2)]
    b1, b2 = [await dial(server, pool, "b") for _ in range(2)]
    c1 = await dial(server, pool, "c")
    await idle_in(pool, a1, a2, b1, b2)
    assert len(pool) == 3
    assert closed(a1) and not any(closed(c) for c in (a2, b1, b2))

    await idle_in(pool, c1)
    assert len(pool) == 3
    assert closed(a2)  # "a" was released to longest ago
    assert pool.acquire("a") is None
    assert {id(pool.acquire("b")), id(pool.acquire("b")), id(pool.acquire("c"))} == {id(b1), id(b2), id(c1)}
    assert len(pool) == 0
    for conn in (b1, b2, c1):
        conn.close()


async def test_idle_connection_expires(server: KeepAliveServer) -> None:
    """A connection idle for idle_timeout is not handed out again but closed, whichever way it is found."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0)
    by_acquire, by_prune = await dial(server, pool, "a"), await dial(server, pool, "b")
    await idle_in(pool, by_acquire, by_prune)
    by_acquire.idle_since -= 60.0
    by_prune.idle_since -= 60.0
    assert pool.acquire("a") is None
    assert closed(by_acquire)
    assert pool.prune() == 1
    assert closed(by_prune)
    assert len(pool) == 0
    assert pool.acquire("b") is None


async def test_prune_keeps_fresh_connections(server: KeepAliveServer) -> None:
    """Expiry counts idle time per connection: prune closes the stale one and keeps its fresh neighbour."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0)
    stale, fresh = await dial(server, pool), await dial(server, pool)
    await idle_in(pool, stale, fresh)
    stale.idle_since -= 60.0  # idle for a minute, as far as the pool's clock is concerned
    assert pool.prune() == 1
    assert closed(stale) and not closed(fresh)
    assert len(pool) == 1
    assert pool.acquire("a") is fresh
    fresh.close()


async def test_reuse_refreshes_idle_time(server: KeepAliveServer) -> None:
    """Idle expiry is measured from the last release, not from when the connection was opened."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0)
    conn = await dial(server, pool)
    await idle_in(pool, conn)
    conn.idle_since -= 20.0
    assert pool.acquire("a") is conn
    await roundtrip(conn)
    conn.idle_since -= 20.0  # 40 s since it was first kept, 20 s since its last use
    assert pool.prune() == 0
    assert pool.acquire("a") is conn
    assert server.accepted == 1
    conn.close()


async def test_prune_drops_connections_the_upstream_closed(server: KeepAliveServer) -> None:
    """Connections closed by the upstream (tinyproxy closes after each answer) or by us are pruned."""
    pool = ConnectionPool(per_key=8, idle_timeout=30.0)
    conns = [await dial(server, pool) for _ in range(4)]
    await eventually(lambda: len(server.writers) == 4)
    await idle_in(pool, *conns)
    server.writers[0].close()
    server.writers[1].close()
    await peer_closed(conns[0])
    await peer_closed(conns[1])
    conns[2].close()  # closed on our side

    assert pool.prune() == 3
    assert len(pool) == 1
    assert pool.acquire("a") is conns[3]
    assert pool.acquire("a") is None
    conns[3].close()


async def test_acquire_skips_closed_connections(server: KeepAliveServer) -> None:
    """acquire never hands out a connection the upstream closed; it closes it and tries the next."""
    pool = ConnectionPool(per_key=8, idle_timeout=30.0)
    live, dead = await dial(server, pool), await dial(server, pool)
    await eventually(lambda: len(server.writers) == 2)
    await idle_in(pool, live, dead)  # dead is newest: acquire looks at it first
    server.writers[1].close()
    await peer_closed(dead)

    assert pool.acquire("a") is live
    assert len(pool) == 0
    assert (await roundtrip(live)).startswith(b"HTTP/1.1 200")
    live.close()


async def test_a_connection_that_speaks_while_idle_is_closed(server: KeepAliveServer) -> None:
    """A byte from the upstream while nobody asked (a forged extra answer) closes the connection: the
    next request never reads it."""
    pool = ConnectionPool()
    conn = await dial(server, pool)
    await eventually(lambda: len(server.writers) == 1)
    await idle_in(pool, conn)
    server.writers[0].write(ANSWER)  # unasked
    await peer_closed(conn)
    assert pool.acquire("a") is None


async def test_an_answer_longer_than_its_framing_is_not_pooled() -> None:
    """Bytes after the end of an answer (in the same read) mean the connection is out of step: closed."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ANSWER + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
        await writer.drain()
        await reader.read()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        pool = ConnectionPool()
        loop = asyncio.get_running_loop()
        port = srv.sockets[0].getsockname()[1]
        _, conn = await loop.create_connection(lambda: UpstreamConnection(loop, "a", 65536, pool), "127.0.0.1", port)
        data = await roundtrip(conn)
        assert data.endswith(b"ok") and b"forged" not in data
        assert closed(conn) and len(pool) == 0
    finally:
        srv.close()
