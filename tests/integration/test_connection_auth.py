"""Connection-bound authentication (NTLM, Negotiate) through the pooled plain-HTTP path, on real sockets.

The origin is an aiohttp server that authenticates TCP connections, not requests, as IIS does: a
``401 WWW-Authenticate: NTLM`` invites a handshake (NTLM type 1 -> 401 with a challenge -> type 3 ->
200), or a one-leg ``Negotiate`` token authenticates at once, and from then on every request on that
connection is that user's, with or without credentials.  Two gateway users, alice and bob, on their own
client connections: bob must never ride alice's authenticated connection, while alice's handshake and
what it authenticated stay on one connection.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import ProxyPool
from tests.integration.conftest import PoolFactory
from tests.support.upstreams import Upstream

pytestmark = pytest.mark.timeout(60)

TYPE1 = base64.b64encode(b"NTLMSSP\x00\x01\x00\x00\x00\x07\x82\x08\x00").decode()


def type3(user: str) -> str:
    return base64.b64encode(b"NTLMSSP\x00\x03\x00\x00\x00" + user.encode()).decode()


def kerberos(user: str) -> str:
    return base64.b64encode(b"KRB5:" + user.encode()).decode()


@dataclass
class BoundAuthOrigin:
    """Remembers which TCP connection (its peer address) authenticated as whom; logs every request as
    (client tag from ``X-Client``, connection, user the connection is authenticated as, or None)."""

    authenticated: dict[Any, str] = field(default_factory=dict)
    challenged: set[Any] = field(default_factory=set)
    log: list[tuple[str, Any, str | None]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        conn = request.transport.get_extra_info("peername")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("ntlm", "negotiate"):
            message = base64.b64decode(token)
            if message.startswith(b"NTLMSSP\x00\x01"):
                self.challenged.add(conn)
                challenge = base64.b64encode(b"NTLMSSP\x00\x02\x00\x00\x00challenge").decode()
                return self._answer(request, conn, 401, {"WWW-Authenticate": f"NTLM {challenge}"})
            if message.startswith(b"NTLMSSP\x00\x03") and conn in self.challenged:
                self.challenged.discard(conn)
                self.authenticated[conn] = message[12:].decode()
            elif message.startswith(b"KRB5:") and scheme.lower() == "negotiate":
                self.authenticated[conn] = message[5:].decode()
        if conn in self.authenticated:
            return self._answer(request, conn, 200, {})
        return self._answer(request, conn, 401, {"WWW-Authenticate": "Negotiate, NTLM"})

    def _answer(self, request: web.Request, conn: Any, status: int, headers: dict[str, str]) -> web.Response:
        user = self.authenticated.get(conn)
        self.log.append((request.headers.get("X-Client", "?"), conn, user))
        return web.Response(status=status, headers=headers, text=f"hello {user}" if user else "who are you?")

    def rides(self, client: str) -> list[str | None]:
        """The users whose connections carried ``client``'s requests (None: an unauthenticated one)."""
        return [user for tag, _, user in self.log if tag == client]

    def connections(self, client: str) -> set[Any]:
        return {conn for tag, conn, _ in self.log if tag == client}


@pytest.fixture
async def handshake_origin() -> AsyncIterator[tuple[BoundAuthOrigin, int]]:
    origin = BoundAuthOrigin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield origin, server.port
    await server.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Client:
    """One client connection to the gateway, as one gateway user, tagged for the origin's log."""

    def __init__(self, pool: ProxyPool, tag: str, credentials: str | None, port: int) -> None:
        self.pool, self.tag, self.credentials, self.port = pool, tag, credentials, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Client:
        host, port = self.pool.gateway_address  # type: ignore[misc]
        self.reader, self.writer = await asyncio.open_connection(host, port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.writer is not None
        self.writer.close()

    async def get(self, path: str = "/secret", authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        lines = [f"GET http://127.0.0.1:{self.port}{path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"X-Client: {self.tag}"]
        if self.credentials:
            lines.append(f"Proxy-Authorization: {self.credentials}")
        if authorization:
            lines.append(f"Authorization: {authorization}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            text = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in text[1:] if line)}
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(text[0].split()[1]), headers, body


async def users_pool(make_pool: PoolFactory, upstreams: list[Upstream], kind: str) -> ProxyPool:
    if kind == "direct":
        pool = await make_pool(gateway={"auth": "users", "fallback": "direct", "direct_allow": ["127.0.0.0/8"]})
    else:
        pool = await make_pool([upstreams[0].url(kind)], gateway={"auth": "users"})
        await pool.wait_until(lambda: pool.selector.active_count == 1)
    return pool


async def ntlm_handshake(client: Client) -> None:
    status, headers, _ = await client.get()
    assert status == 401 and "NTLM" in headers["www-authenticate"]
    status, headers, _ = await client.get(authorization=f"NTLM {TYPE1}")
    assert status == 401 and headers["www-authenticate"].startswith("NTLM ")
    status, _, body = await client.get(authorization=f"NTLM {type3(client.tag)}")
    assert (status, body) == (200, f"hello {client.tag}".encode())


@pytest.mark.parametrize("kind", ["http", "socks5", "direct"])
async def test_an_ntlm_connection_serves_its_own_client_only(
    make_pool: PoolFactory, upstreams: list[Upstream], handshake_origin: tuple[BoundAuthOrigin, int], kind: str
) -> None:
    """alice's NTLM handshake completes on one upstream connection, which then answers her credential-less
    requests as her; bob, asking meanwhile and after alice left, always lands on an unauthenticated
    connection (401), never on alice's, and a later request of alice's to another target works as usual."""
    origin, port = handshake_origin
    pool = await users_pool(make_pool, upstreams, kind)
    alice = await pool.accounts.add_user("alice", 100)
    bob = await pool.accounts.add_user("bob", 100)
    async with Client(pool, "alice", basic("alice", alice.password), port) as a:
        await ntlm_handshake(a)
        assert len(origin.connections("alice")) == 1  # the handshake stayed on one connection
        for _ in range(3):
            assert (await a.get("/again"))[2] == b"hello alice"
        async with Client(pool, "bob", basic("bob", bob.password), port) as b:
            for _ in range(3):
                status, _, body = await b.get()
                assert (status, body) == (401, b"who are you?")
        assert (await a.get("/still"))[2] == b"hello alice"
        assert len(origin.connections("alice")) == 1
    async with Client(pool, "bob", basic("bob", bob.password), port) as b:  # alice gone: her connection too
        for _ in range(3):
            assert (await b.get())[0] == 401
    assert set(origin.rides("bob")) == {None}
    assert not origin.connections("bob") & origin.connections("alice")


@pytest.mark.parametrize("kind", ["http", "direct"])
async def test_a_one_leg_negotiate_on_a_pooled_connection_leaves_the_pool(
    make_pool: PoolFactory, upstreams: list[Upstream], handshake_origin: tuple[BoundAuthOrigin, int], kind: str
) -> None:
    """A Kerberos-style ``Authorization: Negotiate`` sent unasked, on a connection warmed by anyone, authenticates
    it at once: it is alice's from then on (her next requests ride it), and bob's requests afterwards, while
    alice stays and after she left, reach the origin only on connections never authenticated."""
    origin, port = handshake_origin
    pool = await users_pool(make_pool, upstreams, kind)
    alice = await pool.accounts.add_user("alice", 100)
    bob = await pool.accounts.add_user("bob", 100)
    async with Client(pool, "bob", basic("bob", bob.password), port) as b:
        assert (await b.get("/warm"))[0] == 401  # leaves an idle pooled connection behind
    async with Client(pool, "alice", basic("alice", alice.password), port) as a:
        status, _, body = await a.get(authorization=f"Negotiate {kerberos('alice')}")
        assert (status, body) == (200, b"hello alice")
        assert (await a.get("/next"))[2] == b"hello alice"
        async with Client(pool, "bob", basic("bob", bob.password), port) as b:
            assert (await b.get())[0] == 401
    async with Client(pool, "bob", basic("bob", bob.password), port) as b:
        assert (await b.get())[0] == 401
        assert (await b.get())[0] == 401
    assert set(origin.rides("bob")) == {None}


async def test_a_challenge_binds_the_connection_before_any_credential(
    make_pool: PoolFactory, upstreams: list[Upstream], handshake_origin: tuple[BoundAuthOrigin, int]
) -> None:
    """The first 401 inviting NTLM already binds its connection to the client that got it: bob's request
    while alice holds it is carried on another connection, and alice's handshake continues on hers."""
    origin, port = handshake_origin
    pool = await users_pool(make_pool, upstreams, "http")
    alice = await pool.accounts.add_user("alice", 100)
    bob = await pool.accounts.add_user("bob", 100)
    async with Client(pool, "alice", basic("alice", alice.password), port) as a:
        assert (await a.get())[0] == 401
        async with Client(pool, "bob", basic("bob", bob.password), port) as b:
            assert (await b.get())[0] == 401
        assert not origin.connections("bob") & origin.connections("alice")
        assert (await a.get(authorization=f"NTLM {TYPE1}"))[0] == 401
        assert (await a.get(authorization=f"NTLM {type3('alice')}"))[2] == b"hello alice"
    assert len(origin.connections("alice")) == 1
    assert pool.gateway.idle_upstream_connections <= 1  # only bob's unauthenticated one may be pooled


async def test_a_bound_connection_is_not_another_users_on_the_same_client_connection(
    make_pool: PoolFactory, upstreams: list[Upstream], handshake_origin: tuple[BoundAuthOrigin, int]
) -> None:
    """A downstream proxy that pools its connections sends alice's and bob's requests on one client
    connection: alice's NTLM-authenticated upstream connection is hers alone (bob gets 401 on another
    connection), and it still serves her after bob's request."""
    origin, port = handshake_origin
    pool = await users_pool(make_pool, upstreams, "http")
    alice = await pool.accounts.add_user("alice", 100)
    bob = await pool.accounts.add_user("bob", 100)
    async with Client(pool, "alice", basic("alice", alice.password), port) as shared:
        await ntlm_handshake(shared)
        shared.tag, shared.credentials = "bob", basic("bob", bob.password)
        status, _, body = await shared.get()
        assert (status, body) == (401, b"who are you?")
        shared.tag, shared.credentials = "alice", basic("alice", alice.password)
        assert (await shared.get("/again"))[2] == b"hello alice"
    assert set(origin.rides("bob")) == {None}
    assert not origin.connections("bob") & origin.connections("alice")
