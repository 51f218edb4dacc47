"""The keep-alive upstream ``ConnectionPool``: caps, idle expiry, pruning and reuse.

Connections are real TCP sockets to a small keep-alive HTTP server on loopback, dialled with the
gateway's own ``open_forward``, so "reused" means the server saw no new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.proxy.upstream import ConnectionPool, PooledConnection, open_forward
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


async def dial(server: KeepAliveServer) -> PooledConnection:
    """A fresh connection, opened the way the gateway opens one to an HTTP upstream."""
    reader, writer = await open_forward(server.url, timeout=5.0)
    return PooledConnection(reader, writer)


async def roundtrip(conn: PooledConnection) -> bytes:
    """One request and its whole answer on ``conn`` (so it is idle and reusable afterwards)."""
    conn.writer.write(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await conn.writer.drain()
    async with asyncio.timeout(5):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        body = await conn.reader.readexactly(2)
    return head + body


async def peer_closed(conn: PooledConnection) -> None:
    """Wait for the EOF the server's close sends (a real signal, not a guess)."""
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""


def closed(conn: PooledConnection) -> bool:
    return conn.writer.is_closing()


async def test_second_request_reuses_the_same_connection(server: KeepAliveServer) -> None:
    """A released connection comes back from acquire and carries the next request: one accept, two requests."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0)
    assert pool.acquire("up") is None
    conn = await dial(server)
    assert (await roundtrip(conn)).startswith(b"HTTP/1.1 200")
    pool.release("up", conn)
    assert len(pool) == 1

    again = pool.acquire("up")
    assert again is conn
    assert again.uses == 1  # it has served before: the gateway treats it as possibly stale
    assert len(pool) == 0
    assert (await roundtrip(again)).startswith(b"HTTP/1.1 200")
    pool.release("up", again)
    assert again.uses == 2
    assert server.accepted == 1 and server.requests == 2
    pool.close()


async def test_keys_are_separate(server: KeepAliveServer) -> None:
    """A connection kept for one upstream is never handed out for another."""
    pool = ConnectionPool()
    conn = await dial(server)
    pool.release("a", conn)
    assert pool.acquire("b") is None
    assert pool.acquire("a") is conn
    conn.close()


async def test_per_key_cap_closes_the_oldest(server: KeepAliveServer) -> None:
    """Past per_key idle connections for one upstream, the oldest is closed; other keys keep their own."""
    pool = ConnectionPool(per_key=2, idle_timeout=30.0)
    first, second, third = [await dial(server) for _ in range(3)]
    for conn in (first, second, third):
        pool.release("a", conn)
    assert len(pool) == 2
    assert closed(first) and not closed(second) and not closed(third)

    other = await dial(server)
    pool.release("b", other)
    assert len(pool) == 3  # the cap is per key
    assert pool.acquire("a") is third  # newest first
    assert pool.acquire("a") is second
    assert pool.acquire("a") is None
    assert pool.acquire("b") is other
    for conn in (second, third, other):
        conn.close()


async def test_per_key_zero_keeps_nothing(server: KeepAliveServer) -> None:
    """upstream_pool_size = 0 turns keep-alive off: a released connection is closed at once."""
    pool = ConnectionPool(per_key=0)
    conn = await dial(server)
    pool.release("a", conn)
    assert len(pool) == 0 and closed(conn)
    assert pool.acquire("a") is None


async def test_global_cap_evicts_from_the_least_recently_used_key(server: KeepAliveServer) -> None:
    """max_total bounds idle sockets whatever the number of upstreams; eviction starts at the stalest key."""
    pool = ConnectionPool(per_key=10, idle_timeout=30.0, max_total=3)
    a1, a2, b1, b2, c1 = [await dial(server) for _ in range(5)]
    for key, conn in (("a", a1), ("a", a2), ("b", b1), ("b", b2)):
        pool.release(key, conn)
    assert len(pool) == 3
    assert closed(a1) and not any(closed(c) for c in (a2, b1, b2))

    pool.release("c", c1)
    assert len(pool) == 3
    assert closed(a2)  # "a" was released to longest ago
    assert pool.acquire("a") is None
    assert {id(pool.acquire("b")), id(pool.acquire("b")), id(pool.acquire("c"))} == {id(b1), id(b2), id(c1)}
    assert len(pool) == 0
    for conn in (b1, b2, c1):
        conn.close()


async def test_max_keys_drops_the_least_recently_released_key(server: KeepAliveServer) -> None:
    """The number of upstreams with idle connections is bounded too; a release refreshes its key."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0, max_keys=2)
    a1, b1, a2, c1 = [await dial(server) for _ in range(4)]
    pool.release("a", a1)
    pool.release("b", b1)
    pool.release("a", a2)  # "a" is now the most recent key
    pool.release("c", c1)
    assert closed(b1)
    assert not any(closed(c) for c in (a1, a2, c1))
    assert pool.acquire("b") is None
    assert len(pool) == 3
    pool.close()
    assert len(pool) == 0 and all(closed(c) for c in (a1, a2, c1))


async def test_idle_connection_expires(server: KeepAliveServer) -> None:
    """A connection idle for idle_timeout is not handed out again but closed, whichever way it is found."""
    pool = ConnectionPool(per_key=4, idle_timeout=0.05)
    by_acquire, by_prune = await dial(server), await dial(server)
    pool.release("a", by_acquire)
    pool.release("b", by_prune)
    await eventually(lambda: time.monotonic() - max(by_acquire.idle_since, by_prune.idle_since) >= 0.05)

    assert pool.acquire("a") is None
    assert closed(by_acquire)
    assert pool.prune() == 1
    assert closed(by_prune)
    assert len(pool) == 0
    assert pool.acquire("b") is None


async def test_prune_keeps_fresh_connections(server: KeepAliveServer) -> None:
    """Expiry counts idle time per connection: prune closes the stale one and keeps its fresh neighbour."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0)
    stale, fresh = await dial(server), await dial(server)
    pool.release("a", stale)
    pool.release("a", fresh)
    stale.idle_since -= 60.0  # idle for a minute, as far as the pool's clock is concerned
    assert pool.prune() == 1
    assert closed(stale) and not closed(fresh)
    assert len(pool) == 1
    assert pool.acquire("a") is fresh
    fresh.close()


async def test_reuse_refreshes_idle_time(server: KeepAliveServer) -> None:
    """Idle expiry is measured from the last release, not from when the connection was opened."""
    pool = ConnectionPool(per_key=4, idle_timeout=30.0)
    conn = await dial(server)
    pool.release("a", conn)
    conn.idle_since -= 20.0
    assert pool.acquire("a") is conn
    await roundtrip(conn)
    pool.release("a", conn)
    conn.idle_since -= 20.0  # 40 s since it was first kept, 20 s since its last use
    assert pool.prune() == 0
    assert pool.acquire("a") is conn
    assert server.accepted == 1
    conn.close()


async def test_prune_drops_connections_the_upstream_closed(server: KeepAliveServer) -> None:
    """Connections closed by the upstream (tinyproxy closes after each answer) or by us are pruned."""
    pool = ConnectionPool(per_key=8, idle_timeout=30.0)
    conns = [await dial(server) for _ in range(4)]
    await eventually(lambda: len(server.writers) == 4)
    for conn in conns:
        pool.release("a", conn)
    server.writers[0].close()
    server.writers[1].close()
    await peer_closed(conns[0])
    await peer_closed(conns[1])
    conns[2].close()  # closed on our side

    assert pool.prune() == 3
    assert len(pool) == 1
    assert closed(conns[0]) and closed(conns[1])
    assert pool.acquire("a") is conns[3]
    assert pool.acquire("a") is None
    conns[3].close()


async def test_acquire_skips_closed_connections(server: KeepAliveServer) -> None:
    """acquire never hands out a connection the upstream closed; it closes it and tries the next."""
    pool = ConnectionPool(per_key=8, idle_timeout=30.0)
    live, dead = await dial(server), await dial(server)
    await eventually(lambda: len(server.writers) == 2)
    pool.release("a", live)
    pool.release("a", dead)  # newest: acquire looks at it first
    server.writers[1].close()
    await peer_closed(dead)

    assert pool.acquire("a") is live
    assert closed(dead)
    assert len(pool) == 0
    assert (await roundtrip(live)).startswith(b"HTTP/1.1 200")
    live.close()


async def test_release_of_a_closed_connection_is_not_pooled(server: KeepAliveServer) -> None:
    """A connection the upstream closed while answering is closed on release rather than kept."""
    pool = ConnectionPool()
    conn = await dial(server)
    await eventually(lambda: len(server.writers) == 1)
    server.writers[0].close()
    await peer_closed(conn)
    pool.release("a", conn)
    assert len(pool) == 0 and closed(conn)
    assert pool.acquire("a") is None


async def test_discard_key_closes_that_upstreams_connections(server: KeepAliveServer) -> None:
    """After a stale connection the gateway drops every idle one for that upstream, and only those."""
    pool = ConnectionPool()
    a1, a2, b1 = [await dial(server) for _ in range(3)]
    pool.release("a", a1)
    pool.release("a", a2)
    pool.release("b", b1)
    pool.discard_key("a")
    assert closed(a1) and closed(a2) and not closed(b1)
    assert len(pool) == 1
    assert pool.acquire("a") is None
    assert pool.acquire("b") is b1
    b1.close()
