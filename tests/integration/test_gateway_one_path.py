"""Issue 12 on the one request path, on real sockets: wrong-site delivery and forged extra answers (item 2),
stalled bodies and client closes (item 3), slots held by idle or unauthenticated clients (item 5), and
the wire-format holes of item 9 (non-HTTP first bytes, bare LF, HTTP/0.9, identity coding, framing
fields in trailers, the access log line).  Upstreams are pproxy; origins are raw sockets that log every
request they receive."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from pool.models import Proxy, ProxyStatus, UpstreamURL, utcnow
from tests.integration.conftest import PoolFactory
from tests.integration.test_gateway_limits import (
    bookkeeping,
    connection,
    connections_on,
    get,
    read_answer,
    read_to_eof,
)
from tests.support.upstreams import Upstream, closed_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


@dataclass
class RawOrigin:
    """A keep-alive origin on a raw socket: logs each request head's first line and Host, answers with
    ``answer(head)`` (bytes), reading any Content-Length body first."""

    answer: Callable[[bytes], bytes]
    seen: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    server: asyncio.AbstractServer | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                host = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:")), "")
                self.seen.append((lines[0], host))
                length = next(
                    (int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0
                )
                if length:
                    await reader.readexactly(length)
                writer.write(self.answer(head))
                await writer.drain()

    async def __aenter__(self) -> RawOrigin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()


def named(name: str) -> Callable[[bytes], bytes]:
    body = name.encode()
    return lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def request(kind: str, target: str, path: str) -> bytes:
    if kind == "post":
        body = b"payload"
        return (
            f"POST http://{target}{path} HTTP/1.1\r\nHost: {target}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
    if kind == "http10":
        return f"GET http://{target}{path} HTTP/1.0\r\nHost: {target}\r\nConnection: keep-alive\r\n\r\n".encode()
    if kind == "patch":
        return f"PATCH http://{target}{path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    return f"GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


async def add_dead_socks(pool: object) -> None:
    """An active-looking SOCKS5 upstream whose port refuses: every pick of it fails over."""
    pool.selector.update(  # type: ignore[attr-defined]
        Proxy(
            id=901,
            upstream=UpstreamURL.parse(f"socks5://127.0.0.1:{closed_port()}"),
            status=ProxyStatus.ACTIVE,
            last_checked=utcnow(),
        )
    )


# ---------------------------------------------------------------------------------------------
# item 2: each origin receives only its own requests; a forged extra answer reaches nobody
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["post", "http10", "patch", "get_after_socks_failover"])
@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_alternating_targets_reach_only_their_own_origin(
    make_pool: PoolFactory, upstreams: list[Upstream], kind: str, scheme: str
) -> None:
    """Requests alternating between two origins through one pproxy upstream (which ties a kept-alive
    connection to its first target): origin A sees only /first-N with its own Host, B only /second-N,
    for bodies, HTTP/1.0, non-idempotent methods and GETs after a failed SOCKS attempt."""
    async with RawOrigin(named("first")) as first, RawOrigin(named("second")) as second:
        pool = await make_pool(
            [upstreams[0].url(scheme)], gateway={"max_retries": 3}, pool={"passive_failure_limit": 1000}
        )
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        method = "get"
        if kind == "get_after_socks_failover":
            await add_dead_socks(pool)
        else:
            method = kind
        origins = [(first, "first"), (second, "second")]
        for n in range(6):
            origin, name = origins[n % 2]
            target = f"127.0.0.1:{origin.port}"
            async with connection(pool.gateway_address) as (reader, writer):
                writer.write(request(method, target, f"/{name}-{n}"))
                answer = await read_answer(reader)
                assert answer.status == 200, answer.head
                assert answer.body == name.encode()
        for origin, name in origins:
            assert origin.seen, name
            for line, host in origin.seen:
                assert f" /{name}-" in line, (name, origin.seen)
                assert host == f"127.0.0.1:{origin.port}", (name, origin.seen)


async def test_alternating_targets_on_one_client_connection(make_pool: PoolFactory, upstreams: list[Upstream]) -> None:
    """The same on one kept-alive client connection: POSTs and GETs alternate between two origins."""
    async with RawOrigin(named("first")) as first, RawOrigin(named("second")) as second:
        pool = await make_pool([upstreams[0].url()])
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        async with connection(pool.gateway_address) as (reader, writer):
            for n in range(8):
                origin, name = ((first, "first"), (second, "second"))[n % 2]
                writer.write(request("post" if n % 4 < 2 else "get", f"127.0.0.1:{origin.port}", f"/{name}-{n}"))
                answer = await read_answer(reader)
                assert answer.status == 200 and answer.body == name.encode(), answer
        assert all(" /first-" in line for line, _ in first.seen) and len(first.seen) == 4
        assert all(" /second-" in line for line, _ in second.seen) and len(second.seen) == 4


async def test_forged_extra_answer_reaches_no_client(make_pool: PoolFactory, upstreams: list[Upstream]) -> None:
    """An origin that sends a second, forged answer after each real one: the next client (on a pooled
    upstream connection) gets its own answer, never the forgery."""
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"

    def answer(head: bytes) -> bytes:
        return named("real")(head) + forged

    async with RawOrigin(answer) as origin:
        pool = await make_pool([upstreams[0].url()])
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        target = f"127.0.0.1:{origin.port}"
        for _ in range(4):
            async with connection(pool.gateway_address) as (reader, writer):
                writer.write(get(target, "/x", close=True))
                data = await read_to_eof(reader)
                assert b"forged" not in data, data
                assert data.endswith(b"real"), data


# ---------------------------------------------------------------------------------------------
# item 3: a stalled body is cut after read_timeout; a client that closes frees everything at once
# ---------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stalling_origin() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """Answers every request with Content-Length: 1000, ten bytes, then silence."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            if b"Content-Length: 5" in head:
                await reader.readexactly(5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            await writer.drain()
            await reader.read()  # silence until the gateway goes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], writers
    finally:
        server.close()
        for writer in writers:
            writer.close()


STALL_KINDS = {
    "get": "GET {t}/s HTTP/1.1\r\nHost: {h}\r\n\r\n",
    "http10": "GET {t}/s HTTP/1.0\r\nHost: {h}\r\n\r\n",
    "delete": "DELETE {t}/s HTTP/1.1\r\nHost: {h}\r\n\r\n",
    "patch": "PATCH {t}/s HTTP/1.1\r\nHost: {h}\r\n\r\n",
    "post": "POST {t}/s HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("kind", sorted(STALL_KINDS))
async def test_clients_leaving_a_stalled_body_free_their_slots(
    make_pool: PoolFactory, upstreams: list[Upstream], kind: str
) -> None:
    """20 clients each get a head and 10 of 1000 body bytes, then close: within 2 s the gateway holds no
    client, task or upstream connection for them, and the next client is served."""
    async with stalling_origin() as (port, origin_writers):
        pool = await make_pool([upstreams[0].url()], gateway={"max_connections": 20, "read_timeout": 30})
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        gateway = pool.gateway
        base_tasks = set(asyncio.all_tasks())
        host = f"127.0.0.1:{port}"
        raw = STALL_KINDS[kind].format(t=f"http://{host}", h=host).encode()
        clients = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection(*pool.gateway_address)
            writer.write(raw)
            clients.append((reader, writer))
        for reader, _ in clients:
            async with asyncio.timeout(5):
                await reader.readuntil(b"0123456789")
        for _, writer in clients:
            writer.close()
        await eventually(
            lambda: bookkeeping(pool)["clients"] == 0
            and not [t for t in asyncio.all_tasks() if t not in base_tasks and t is not asyncio.current_task()]
            and not connections_on([upstreams[0].port]),
            lambda: (
                f"bookkeeping {bookkeeping(pool)}, tasks "
                f"{[t.get_name() for t in asyncio.all_tasks() if t not in base_tasks and t is not asyncio.current_task()]}, "
                f"connections to the upstream {connections_on([upstreams[0].port])}"
            ),
            timeout=2.0,
        )
        assert gateway.idle_upstream_connections == 0  # a cut answer's connection is never pooled


async def test_stalled_body_is_cut_after_read_timeout(make_pool: PoolFactory, upstreams: list[Upstream]) -> None:
    """A client that stays while the body stalls: after read_timeout the gateway closes both sides."""
    async with stalling_origin() as (port, origin_writers):
        pool = await make_pool([upstreams[0].url()], gateway={"read_timeout": 0.5})
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        async with connection(pool.gateway_address) as (reader, writer):
            writer.write(get(f"127.0.0.1:{port}", "/s"))
            data = await read_to_eof(reader)
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"0123456789")
        await eventually(lambda: bookkeeping(pool)["clients"] == 0, lambda: f"{bookkeeping(pool)}")


async def test_stalled_upload_is_cut_after_read_timeout(make_pool: PoolFactory, upstreams: list[Upstream], origin) -> None:
    """A client that announces 100 body bytes, sends 3 and stalls is cut after read_timeout."""
    pool = await make_pool([upstreams[0].url()], gateway={"read_timeout": 0.5})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    target = f"127.0.0.1:{origin.port}"
    async with connection(pool.gateway_address) as (reader, writer):
        writer.write(f"POST http://{target}/body HTTP/1.1\r\nHost: {target}\r\nContent-Length: 100\r\n\r\nabc".encode())
        await read_to_eof(reader)
    await eventually(lambda: bookkeeping(pool)["clients"] == 0, lambda: f"{bookkeeping(pool)}")


# ---------------------------------------------------------------------------------------------
# item 5: idle and unauthenticated clients never lock a real one out
# ---------------------------------------------------------------------------------------------


async def test_idle_and_unauthenticated_clients_do_not_lock_out_a_user(
    make_pool: PoolFactory, upstreams: list[Upstream], origin
) -> None:
    """max_connections = 5, auth = users: 8 clients that got a 407 (each closed by the gateway at once),
    then 5 idle keep-alive clients holding every slot; a sixth authenticated client is served 200 at once
    (the oldest idle one is closed to make room), not after a wait, not 503."""
    pool = await make_pool([upstreams[0].url()], gateway={"auth": "users", "max_connections": 5, "head_timeout": 30})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    alice = await pool.accounts.add_user("alice", credits=100)
    target = f"127.0.0.1:{origin.port}"
    token = base64.b64encode(f"alice:{alice.password}".encode()).decode()
    authed = f"GET http://{target}/echo HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}\r\n\r\n"
    idle = []
    try:
        for _ in range(8):
            async with connection(pool.gateway_address) as (reader, writer):
                writer.write(get(target))
                answer = await read_answer(reader)
                assert answer.status == 407 and b"Connection: close" in answer.head
                assert await read_to_eof(reader) == b""  # a 407 closes the connection
        for _ in range(5):
            reader, writer = await asyncio.open_connection(*pool.gateway_address)
            writer.write(authed.encode())
            assert (await read_answer(reader)).status == 200
            idle.append((reader, writer))
        assert bookkeeping(pool)["clients"] == 5
        async with connection(pool.gateway_address) as (reader, writer):
            writer.write(authed.encode())
            answer = await read_answer(reader)
            assert answer.status == 200, answer.head
            assert bookkeeping(pool)["waiting"] == 0
        assert await read_to_eof(idle[0][0]) == b""  # the oldest idle client made room
    finally:
        for _, writer in idle:
            writer.close()


# ---------------------------------------------------------------------------------------------
# item 9: the wire holes
# ---------------------------------------------------------------------------------------------

NOT_HTTP = {
    "tls_client_hello": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32), b"HTTP/1.1 400 "),
    # SOCKS is served on this port (gateway.proxy.socksproto): a BIND gets "command not supported" at once
    "socks5_bind": (b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", b"\x05\x00\x05\x07"),
    "socks4_bind": (b"\x04\x02\x00\x50\x7f\x00\x00\x01user\x00", b"\x00\x5b"),
    "bare_lf": (b"GET http://127.0.0.1/ HTTP/1.1\nHost: 127.0.0.1\n", b"HTTP/1.1 400 "),
    "http09": (b"GET /index.html\r\n", b"HTTP/1.1 400 "),
}


@pytest.mark.parametrize("name", sorted(NOT_HTTP))
async def test_not_http_is_answered_at_once(make_pool: PoolFactory, upstreams: list[Upstream], name: str) -> None:
    """With head_timeout 60 s, a TLS ClientHello, a SOCKS BIND, a bare-LF head or an HTTP/0.9 line
    is answered (and closed) within the read bound, long before head_timeout."""
    payload, expected = NOT_HTTP[name]
    pool = await make_pool([upstreams[0].url()], gateway={"head_timeout": 60})
    async with connection(pool.gateway_address) as (reader, writer):
        writer.write(payload)
        data = await read_to_eof(reader, timeout=10)
    assert data.startswith(expected), data


async def test_identity_transfer_coding_is_refused(make_pool: PoolFactory, upstreams: list[Upstream]) -> None:
    """`Transfer-Encoding: identity, chunked` (read differently by different proxies) gets a 400 and
    never reaches the origin."""
    async with RawOrigin(named("x")) as origin:
        pool = await make_pool([upstreams[0].url()])
        await pool.wait_until(lambda: pool.selector.active_count == 1)
        target = f"127.0.0.1:{origin.port}"
        async with connection(pool.gateway_address) as (reader, writer):
            writer.write(
                f"POST http://{target}/ HTTP/1.1\r\nHost: {target}\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
                "0\r\n\r\n".encode()
            )
            answer = await read_answer(reader)
        assert answer.status == 400 and b"identity" in answer.body
        assert origin.seen == []


async def test_framing_field_in_trailers_is_refused(make_pool: PoolFactory, upstreams: list[Upstream], origin) -> None:
    """A chunked request whose trailer section carries Content-Length is refused (400, closed)."""
    pool = await make_pool([upstreams[0].url()])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    target = f"127.0.0.1:{origin.port}"
    async with connection(pool.gateway_address) as (reader, writer):
        writer.write(
            f"POST http://{target}/body HTTP/1.1\r\nHost: {target}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n0\r\nContent-Length: 99\r\n\r\n".encode()
        )
        data = await read_to_eof(reader)
    assert data.startswith(b"HTTP/1.1 400 ") and b"trailer" in data, data


async def test_access_log_line_names_who_what_where_and_how_much(
    make_pool: PoolFactory, upstreams: list[Upstream], origin, caplog: pytest.LogCaptureFixture
) -> None:
    """log.access_log = true: one line per request with client address, method, target host, status,
    upstream id, bytes each way and duration."""
    pool = await make_pool([upstreams[0].url()], log={"access_log": True})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    proxy_id = pool.selector.proxies()[0].id
    target = f"127.0.0.1:{origin.port}"
    with caplog.at_level(logging.INFO, logger="proxy_pool.access"):
        async with connection(pool.gateway_address) as (reader, writer):
            writer.write(
                f"POST http://{target}/body HTTP/1.1\r\nHost: {target}\r\nContent-Length: 5\r\n\r\nhello".encode()
            )
            answer = await read_answer(reader)
            assert answer.status == 200
        await eventually(lambda: any(r.name == "proxy_pool.access" for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if r.name == "proxy_pool.access")
    assert line.startswith("127.0.0.1:"), line
    assert f" POST {target} 200 ok upstream=" in line, line
    assert " up=5 " in line and " down=" in line and line.endswith("ms"), line
    assert f"upstream={proxy_id} " in line, line


async def test_access_log_names_the_port_and_the_status_sent(
    make_pool: PoolFactory, upstreams: list[Upstream], origin, caplog: pytest.LogCaptureFixture
) -> None:
    """Two services on one host are told apart (host:port for GET, CONNECT and SOCKS5), and a malformed
    request is logged with the 400 it got and what was read of its target (control bytes escaped)."""
    from tests.integration.test_socks_clients import socks5_connect

    pool = await make_pool([upstreams[0].url()], gateway={"allowed_connect_ports": "*"}, log={"access_log": True})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    target = f"127.0.0.1:{origin.port}"
    caplog.set_level(logging.INFO, logger="proxy_pool.access")
    async with connection(pool.gateway_address) as (reader, writer):
        writer.write(get(target))
        assert (await read_answer(reader)).status == 200
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert (await read_answer(reader)).status == 200
    _, socks_writer, reply = await socks5_connect(pool.gateway_address, "127.0.0.1", origin.port)
    assert reply[1] == 0
    socks_writer.close()
    async with connection(pool.gateway_address) as (reader, writer):
        writer.write(f"GET http://{target}/x\x1b[2J HTTP/1.1 extra\r\nHost: {target}\r\n\r\n".encode())
        assert (await read_answer(reader)).status == 400

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "proxy_pool.access"]

    await eventually(lambda: len(lines()) == 4, lambda: f"{lines()}")
    found = lines()
    assert any(f" GET {target} 200 ok " in line for line in found), found
    assert any(f" CONNECT {target} 200 ok " in line for line in found), found
    assert any(f" SOCKS5-CONNECT {target} 200 ok " in line for line in found), found
    assert any(f" GET http://{target}/x\\x1b[2J 400 bad_request " in line for line in found), found
