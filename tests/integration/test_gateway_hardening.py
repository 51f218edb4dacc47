"""Malformed and hostile clients against a real gateway: each gets its status and one line, or a close."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from tests.support.upstreams import closed_port

pytestmark = pytest.mark.timeout(60)


async def exchange(
    address: tuple[str, int], payload: bytes, *, read_timeout: float = 10.0, eof: bool = False
) -> bytes:
    """Send ``payload`` (then EOF if asked) and read until the server closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(payload)
        if eof:
            writer.write_eof()
        await writer.drain()
        chunks = []
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(read_timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer[9:12])


def one_line_body(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body.endswith(b"\n") and body.count(b"\n") == 1, body
    return body.decode()


MALFORMED = [
    (b"GET http://127.0.0.1/ \r\n\r\n", 400, "no version"),
    (b"GET http://127.0.0.1/\r\n\r\n", 400, "HTTP/0.9 style"),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "origin-form"),
    (
        b"POST http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        400,
        "CL and TE",
    ),
    (b"POST http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", 400, "bad CL"),
    (
        b"POST http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        400,
        "repeated CL",
    ),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n folded\r\n\r\n", 400, "obs-fold"),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\x01c\r\n\r\n", 400, "control char"),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "space in name"),
    (b"\x00\x01\x02\x03\r\n\r\n", 400, "binary"),
    (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400, "CONNECT without port"),
]


@pytest.mark.parametrize("payload,status,label", MALFORMED, ids=[m[2] for m in MALFORMED])
async def test_malformed_requests_get_400(make_pool, payload, status, label):
    """Each malformed request gets its status with a one-line body, and the connection closes."""
    pool = await make_pool()
    answer = await exchange(pool.gateway_address, payload)
    assert status_of(answer) == status
    one_line_body(answer)


async def test_origin_form_request_hints_this_is_a_proxy(make_pool):
    """An origin-form request gets 400 with a hint that this is a proxy."""
    pool = await make_pool()
    answer = await exchange(pool.gateway_address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert "proxy" in one_line_body(answer)


async def test_oversized_head_gets_431(make_pool):
    """A head larger than max_header_bytes gets 431."""
    pool = await make_pool(gateway={"max_header_bytes": 4096})
    payload = b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    answer = await exchange(pool.gateway_address, payload)
    assert status_of(answer) == 431


async def test_slow_head_gets_408_and_close(make_pool):
    """A head not complete within head_timeout (slowloris) gets 408 and the connection closes."""
    pool = await make_pool(gateway={"head_timeout": 0.3})
    answer = await exchange(pool.gateway_address, b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127")
    assert status_of(answer) == 408


@pytest.mark.parametrize("path", ["fast", "stream"])
async def test_slow_later_head_gets_408_within_head_timeout(make_pool, upstreams, origin, path):
    """After one request, a later head that trickles in has head_timeout, not the (long) idle_timeout:
    on the callback path, and on a connection the stream path took over (a request with a body)."""
    pool = await make_pool([upstreams[0].url()], gateway={"head_timeout": 0.3, "idle_timeout": 3600})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    try:
        target = f"http://127.0.0.1:{origin.port}/echo"
        if path == "fast":
            first = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n"
        else:
            first = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nContent-Length: 2\r\n\r\nhi"
        writer.write(first.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), 10)
        writer.write(b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 1")  # and nothing more
        async with asyncio.timeout(10):  # far below idle_timeout: only head_timeout can end it
            answer = await reader.read()
        assert status_of(answer) == 408
    finally:
        writer.close()


async def test_connect_to_disallowed_port_gets_403(make_pool, upstreams):
    """CONNECT to a port outside allowed_connect_ports gets 403."""
    pool = await make_pool([upstreams[0].url()])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    answer = await exchange(pool.gateway_address, b"CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: 127.0.0.1:25\r\n\r\n")
    assert status_of(answer) == 403
    assert "25" in one_line_body(answer)


async def test_requests_to_own_addresses_are_loops(make_pool, upstreams):
    """Requests aimed at the gateway's or the admin's own address are refused with 403."""
    pool = await make_pool([upstreams[0].url()], gateway={"allowed_connect_ports": "*"})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    for host, port in (pool.gateway_address, pool.admin_address):
        for payload in (
            f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode(),
            f"GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n".encode(),
            f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode(),
        ):
            answer = await exchange(pool.gateway_address, payload)
            assert status_of(answer) == 403, payload


async def test_idle_keepalive_client_is_closed(make_pool):
    """A client that says nothing after connecting is closed after the time limit."""
    pool = await make_pool(gateway={"head_timeout": 0.3, "idle_timeout": 0.3})
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    data = await asyncio.wait_for(reader.read(), 10)  # EOF (or a 408) arrives: the server closed
    writer.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


async def test_http10_client_and_expect_continue(make_pool, upstreams, origin):
    """HTTP/1.0 gets its answer and a close; Expect: 100-continue gets 100 then the answer."""
    pool = await make_pool([upstreams[0].url("socks5")])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    target = f"127.0.0.1:{origin.port}"
    answer = await exchange(pool.gateway_address, f"GET http://{target}/echo HTTP/1.0\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200")

    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    writer.write(
        f"POST http://{target}/body HTTP/1.1\r\nHost: {target}\r\nContent-Length: 5\r\n"
        f"Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200")
    assert b'"size": 5' in rest


async def test_max_connections_excess_gets_503(make_pool):
    """Past max_connections, a new client from an address whose handshakes fill the slots gets 503 (a busy
    holder makes it wait briefly first: test_gateway_limits)."""
    pool = await make_pool(gateway={"max_connections": 2, "max_handshakes_per_address": 2, "head_timeout": 30})
    holders = [await asyncio.open_connection(*pool.gateway_address) for _ in range(2)]
    try:
        answer = await exchange(pool.gateway_address, b"")
        assert status_of(answer) == 503
    finally:
        for _, writer in holders:
            writer.close()


async def test_all_attempts_fail_gives_502_without_credentials(make_pool, origin):
    """Every upstream refusing gives 502 whose body sums up why, with no credentials in it."""
    pool = await make_pool()
    from pool.models import Proxy, ProxyStatus, UpstreamURL, utcnow

    for i, host in enumerate(("127.0.0.7", "127.0.0.8")):
        proxy = Proxy(
            id=1000 + i,
            upstream=UpstreamURL.parse(f"http://user:s3cret@{host}:{closed_port(host)}"),
            status=ProxyStatus.ACTIVE,
            last_checked=utcnow(),  # not due for a re-check while the test runs
        )
        pool.selector.update(proxy)
    target = f"127.0.0.1:{origin.port}"
    answer = await exchange(pool.gateway_address, f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert status_of(answer) == 502
    body = one_line_body(answer)
    assert "s3cret" not in body and "user" not in body
    assert "#1000" in body and "#1001" in body


async def test_malformed_battery_leaks_no_task_or_socket(make_pool):
    """After a battery of malformed requests the server still serves and holds no client."""
    pool = await make_pool()
    for payload, _, _ in MALFORMED * 3:
        await exchange(pool.gateway_address, payload)
    for cut in (b"\r\n\r\n\r\n", b"GET http://127.0.0.1/ HTTP/1.1\r\nHo", b"CONNECT"):
        answer = await exchange(pool.gateway_address, cut, eof=True)  # EOF in the middle of a head
        assert answer == b"" or status_of(answer) == 400
    gc.collect()
    assert pool.gateway._clients == set()
    answer = await exchange(pool.gateway_address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 400


async def test_debug_headers_name_the_upstream_by_id(make_pool, upstreams, origin):
    """debug_headers adds X-Proxy-Pool-Upstream with the upstream's id, never its address."""
    pool = await make_pool([upstreams[0].url()], gateway={"debug_headers": True})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    target = f"127.0.0.1:{origin.port}"
    answer = await exchange(
        pool.gateway_address, f"GET http://{target}/echo HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
    )
    proxy = pool.selector.proxies()[0]
    assert f"X-Proxy-Pool-Upstream: {proxy.id}\r\n".encode() in answer
