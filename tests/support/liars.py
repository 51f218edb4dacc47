"""Lying proxies on loopback, the kinds found on free lists (issue 14), each a few dozen lines of asyncio:

- ``fake_judge``: answers every plain-HTTP request itself with a canned httpbin page
  (``origin: 1.2.3.4``) and forwards nothing;
- ``html_injector``: forwards plain HTTP, appending a ``<script>`` to every text/html body;
- ``man_in_the_middle``: forwards plain HTTP honestly, but answers CONNECT itself and speaks TLS with
  a certificate of its own;
- ``connect_refuser``: forwards plain HTTP honestly, answers CONNECT with 405.

Each is a ``GradeProxy`` (elite: it adds no header), so plain forwarding, credentials and the exit
address (the proxy's own 127.0.0.x) behave like the honest grade proxies beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trustme

from tests.support.grade_proxies import Grade, GradeProxy, _close

INJECTED = b"<script>steal()</script>"
CANNED = json.dumps({"args": {}, "origin": "1.2.3.4", "headers": {"Host": "httpbin.org"}}).encode()


def _response(status: str, body: bytes = b"", content_type: str = "text/plain") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


@dataclass
class Liar(GradeProxy):
    """A grade proxy whose ``_serve`` lies in one way; ``lies`` counts the requests it lied to."""

    lies: int = 0
    connects: int = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            self.connects += 1
        if not await self.lie(method, target, head, reader, writer):
            await super()._serve(_Replay(head, reader), writer)  # type: ignore[arg-type]

    async def lie(
        self, method: str, target: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer the request itself and return True, or return False to forward it honestly."""
        raise NotImplementedError


class _Replay:
    """A reader that gives back the head already read, then the rest of the connection."""

    def __init__(self, head: bytes, reader: asyncio.StreamReader) -> None:
        self._head = head
        self._reader = reader

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        head, self._head = self._head, b""
        return head if head else await self._reader.readuntil(separator)

    async def read(self, n: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        return await self._reader.read(n)


@dataclass
class FakeJudge(Liar):
    async def lie(self, method, target, head, reader, writer) -> bool:
        self.lies += 1
        if method == "CONNECT":
            writer.write(_response("405 Method Not Allowed"))
        else:
            writer.write(_response("200 OK", CANNED, "application/json"))
        return True


@dataclass
class ReflectingJudge(Liar):
    """A cleverer fake judge: echoes the request (so the token comes back) but makes up the exit address."""

    async def lie(self, method, target, head, reader, writer) -> bool:
        from urllib.parse import parse_qs, urlsplit

        self.lies += 1
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {n.strip(): v.strip() for n, _, v in (line.partition(":") for line in lines if line)}
        args = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
        origin = f"198.51.100.{self.lies % 250 + 1}"  # a different story every time
        body = json.dumps({"args": args, "origin": origin, "headers": headers}).encode()
        writer.write(_response("200 OK", body, "application/json"))
        return True


@dataclass
class ConnectRefuser(Liar):
    async def lie(self, method, target, head, reader, writer) -> bool:
        if method != "CONNECT":
            return False
        self.lies += 1
        writer.write(_response("405 Method Not Allowed", b"CONNECT is not allowed here"))
        return True


@dataclass
class ManInTheMiddle(Liar):
    """Says the tunnel is open, then plays the TLS server itself with a certificate of its own CA."""

    ca: trustme.CA = field(default_factory=trustme.CA)

    async def lie(self, method, target, head, reader, writer) -> bool:
        if method != "CONNECT":
            return False
        self.lies += 1
        host = target.rpartition(":")[0].strip("[]")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(host or "localhost").configure_cert(ctx)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        transport = writer.transport
        loop = asyncio.get_running_loop()
        try:  # loop.start_tls, not StreamWriter.start_tls: a refused handshake leaves a usable writer
            tls = await asyncio.wait_for(loop.start_tls(transport, transport.get_protocol(), ctx, server_side=True), 5)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
            return True
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(reader.read(65536), 5)  # what the victim sends, read by the liar
        if tls is not None:
            tls.close()
        return True


@dataclass
class HtmlInjector(Liar):
    """Forwards plain HTTP (one request per connection) and rewrites text/html answers."""

    async def lie(self, method, target, head, reader, writer) -> bool:
        if method == "CONNECT":
            return False
        from urllib.parse import urlsplit

        lines = head.decode("latin-1").split("\r\n")
        version = lines[0].split(" ", 2)[2]
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)]
        parts = urlsplit(target)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                parts.hostname, parts.port or 80, local_addr=(self.host, 0)
            )
        except OSError:
            writer.write(_response("502 Bad Gateway"))
            return True
        try:
            up_writer.write(self._forward_head(method, target, version, headers, writer).encode("latin-1"))
            answer = await up_reader.read(-1)  # the forwarded head says Connection: close
        finally:
            await _close(up_writer)
        resp_head, _, body = answer.partition(b"\r\n\r\n")
        if b"text/html" in resp_head.lower():
            self.lies += 1
            body = body.replace(b"</body>", INJECTED + b"</body>") if b"</body>" in body else body + INJECTED
            resp_lines = [
                line for line in resp_head.split(b"\r\n") if not line.lower().startswith(b"content-length:")
            ]
            resp_head = b"\r\n".join([*resp_lines, b"Content-Length: %d" % len(body)])
        writer.write(resp_head + b"\r\n\r\n" + body)
        return True


LIARS: dict[str, type[Liar]] = {
    "fake_judge": FakeJudge,
    "reflecting_judge": ReflectingJudge,
    "html_injector": HtmlInjector,
    "man_in_the_middle": ManInTheMiddle,
    "connect_refuser": ConnectRefuser,
}


@contextlib.asynccontextmanager
async def liar(kind: str, host: str) -> AsyncIterator[Liar]:
    proxy = LIARS[kind](host, Grade.ELITE)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
