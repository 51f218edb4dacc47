"""Answers of every shape through a real gateway and real upstreams, on one keep-alive client connection.

The fast path slices everyday response heads (gateway/fasthead.py) and rebuilds the others with the
strict rules (gateway/http1.py).  A raw-socket origin sends both kinds; whichever path a head took, the
client must receive exactly what the strict rules build, and the connection must stay usable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from gateway.proxy import fasthead
from gateway.proxy.http1 import forward_response_head, parse_response_head

pytestmark = pytest.mark.timeout(60)

BODY = b"hello, world"
ANSWERS: dict[str, bytes] = {
    # everyday heads: the shortcut takes them
    "/plain": b"HTTP/1.1 200 OK\r\nServer: raw\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
    b"Connection: keep-alive\r\n\r\n" + BODY,
    "/no-connection": b"HTTP/1.1 404 Not Found\r\nContent-Length: 12\r\nETag: \"e\"\r\n\r\n" + BODY,
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
    "/empty": b"HTTP/1.1 204 No Content\r\nServer: raw\r\n\r\n",
    # odd heads: the strict parser rebuilds them (from "/odd-whitespace" on)
    "/odd-whitespace": b"HTTP/1.1 200 OK\r\nServer:   raw  \r\nContent-Length:12\r\n\r\n" + BODY,
    "/hop-by-hop": b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Secret\r\n"
    b"X-Secret: 1\r\nContent-Length: 12\r\n\r\n" + BODY,
    "/our-own": b"HTTP/1.1 200 OK\r\nX-Proxy-Pool-Upstream: 99\r\nContent-Length: 12\r\n\r\n" + BODY,
    "/http10": b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n" + BODY,
    "/no-reason": b"HTTP/1.1 200\r\nContent-Length: 12\r\n\r\n" + BODY,
}


@pytest.fixture
async def raw_origin() -> AsyncIterator[int]:
    """An origin that answers each path with the exact bytes above, keeping connections open."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                writer.write(ANSWERS[path])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if b"\r\ntransfer-encoding: chunked\r\n" in head.lower():
        return head, await reader.readuntil(b"0\r\n\r\n")
    lower = head.lower()
    if b"content-length: " not in lower:
        return head, b""
    length = int(lower.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    return head, await reader.readexactly(length)


def expected_head(raw: bytes) -> bytes:
    """What the strict rules send a keep-alive HTTP/1.1 client for the origin's ``raw`` answer."""
    head = raw[: raw.index(b"\r\n\r\n") + 4]
    return forward_response_head(parse_response_head(head), keep_alive=True)


def test_both_paths_are_covered() -> None:
    shortcut = [path for path, raw in ANSWERS.items() if fasthead.plain_response(raw, "GET") is not None]
    assert shortcut == ["/plain", "/no-connection", "/chunked", "/empty"]


async def test_every_answer_shape_arrives_as_the_strict_rules_build_it(make_pool, upstreams, raw_origin):
    pool = await make_pool([u.url() for u in upstreams])
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    reader, writer = await asyncio.open_connection(*pool.gateway_address)
    try:
        for _ in range(2):  # twice over, so pooled tunnels carry answers of every shape back to back
            for path, raw in ANSWERS.items():
                target = f"127.0.0.1:{raw_origin}"
                writer.write(f"GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                head, body = await asyncio.wait_for(read_answer(reader), 10)
                assert head == expected_head(raw), path
                if path == "/chunked":
                    assert body == b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
                elif path != "/empty":
                    assert body == BODY, path
    finally:
        writer.close()
    assert b"X-Secret" not in expected_head(ANSWERS["/hop-by-hop"])  # the rule the test relies on
