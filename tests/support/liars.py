"""Lying proxies on loopback, the kinds found on free lists (issue 14), each a few dozen lines of asyncio:

- ``fake_judge``: answers every plain-HTTP request itself with a canned httpbin page
  (``origin: 1.2.3.4``) and forwards nothing;
- ``html_injector``: forwards plain HTTP, appending a ``<script>`` to every text/html body;
- ``man_in_the_middle``: forwards plain HTTP honestly, but answers CONNECT itself and speaks TLS with
  a certificate of its own;
- ``connect_refuser``: forwards plain HTTP honestly, answers CONNECT with 405;
- ``tunnel_rewriter``: honest in the absolute form, rewrites plain HTTP inside its CONNECT tunnels
  (adds ``X-Forwarded-For``, ``Via``, a script);
- ``page_refuser``: injects scripts, but answers 403 to the checker's own judge page.

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


async def _carry(
    host: str, port: int, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local: str
) -> None:
    """Carry a tunnel honestly to ``host:port``, ``first`` being what was already read of it."""
    from tests.support.grade_proxies import _pump

    up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), port, local_addr=(local, 0))
    up_writer.write(first)
    try:
        await asyncio.gather(
            _pump(reader, up_writer, close_dst=False), _pump(up_reader, writer, close_dst=True)
        )
    finally:
        await _close(up_writer)


async def _peek(writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> bytes:
    """The first byte waiting on the connection, left in the socket (its transport paused)."""
    import os
    import socket

    raw = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    try:
        raw.setblocking(False)
        ready = loop.create_future()
        loop.add_reader(raw.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, 5)
        finally:
            loop.remove_reader(raw.fileno())
        return raw.recv(1, socket.MSG_PEEK)
    finally:
        raw.close()  # the duplicate only: the connection stays open


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

        if method == "CONNECT":
            writer.write(_response("405 Method Not Allowed"))
            return True
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
        host, _, port = target.rpartition(":")
        transport = writer.transport
        loop = asyncio.get_running_loop()
        transport.pause_reading()  # what comes inside the tunnel stays in the socket until peeked at
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if await _peek(writer, loop) != b"\x16":  # plain HTTP inside: carried honestly; TLS is intercepted
            transport.resume_reading()
            await _carry(host, int(port), b"", reader, writer, self.host)
            return True
        self.lies += 1
        host = host.strip("[]")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(host or "localhost").configure_cert(ctx)
        try:  # loop.start_tls, not StreamWriter.start_tls: a refused handshake leaves a usable writer
            tls = await asyncio.wait_for(loop.start_tls(transport, transport.get_protocol(), ctx, server_side=True), 5)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError):
            return True
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(reader.read(65536), 5)  # what the victim sends, read by the liar
        if tls is not None:
            tls.close()
        return True


def _inject(answer: bytes) -> tuple[bytes, bool]:
    """``answer`` (a whole HTTP response) with a script appended to a text/html body."""
    resp_head, _, body = answer.partition(b"\r\n\r\n")
    if b"text/html" not in resp_head.lower():
        return answer, False
    body = body.replace(b"</body>", INJECTED + b"</body>") if b"</body>" in body else body + INJECTED
    resp_lines = [
        line for line in resp_head.split(b"\r\n") if not line.lower().startswith(b"content-length:")
    ]
    return b"\r\n".join([*resp_lines, b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body, True


@dataclass
class HtmlInjector(Liar):
    """Forwards plain HTTP (one request per connection) and rewrites text/html answers."""

    async def lie(self, method, target, head, reader, writer) -> bool:
        if method == "CONNECT":
            return False
        await self._forward_rewritten(head, target, writer, [])
        return True

    async def _forward_rewritten(
        self, head: bytes, target: str, writer: asyncio.StreamWriter, extra: list[tuple[str, str]]
    ) -> None:
        """Forward one absolute-form request (``head``) with ``extra`` headers; inject into HTML answers."""
        from urllib.parse import urlsplit

        lines = head.decode("latin-1").split("\r\n")
        method, _, version = lines[0].split(" ", 2)
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)]
        parts = urlsplit(target)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                parts.hostname, parts.port or 80, local_addr=(self.host, 0)
            )
        except OSError:
            writer.write(_response("502 Bad Gateway"))
            return
        try:
            forward = self._forward_head(method, target, version, headers + extra, writer)
            up_writer.write(forward.encode("latin-1"))
            answer = await up_reader.read(-1)  # the forwarded head says Connection: close
        finally:
            await _close(up_writer)
        answer, lied = _inject(answer)
        self.lies += lied
        writer.write(answer)


@dataclass
class TunnelRewriter(HtmlInjector):
    """Honest in the absolute form (what a checker sends), but plain HTTP inside its CONNECT tunnels
    (what the gateway sends for http:// targets) gets ``X-Forwarded-For``, ``Via`` and a script."""

    async def lie(self, method, target, head, reader, writer) -> bool:
        if method != "CONNECT":
            return False
        host, _, port = target.rpartition(":")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        first = await reader.readexactly(1)
        if first == b"\x16":  # TLS inside: nothing it can read, carried honestly
            await _carry(host, int(port), first, reader, writer, self.host)
            return True
        inner = first + await reader.readuntil(b"\r\n\r\n")
        request_line, _, rest = inner.partition(b"\r\n")
        method_in, path, version = request_line.decode("latin-1").split(" ", 2)
        url = f"http://{host}:{port}{path}"
        absolute = f"{method_in} {url} {version}\r\n".encode("latin-1") + rest
        client = writer.get_extra_info("peername")[0]
        added = [("X-Forwarded-For", client), ("Via", "1.1 rewriter")]
        await self._forward_rewritten(absolute, url, writer, added)
        return True


@dataclass
class PageRefuser(HtmlInjector):
    """Injects scripts into every page, but answers 403 to the checker's own judge page."""

    async def lie(self, method, target, head, reader, writer) -> bool:
        if method == "CONNECT":
            return False
        if target.split("?", 1)[0].endswith("/judge/page"):
            self.lies += 1
            writer.write(_response("403 Forbidden", b"no"))
            return True
        return await super().lie(method, target, head, reader, writer)


LIARS: dict[str, type[Liar]] = {
    "fake_judge": FakeJudge,
    "reflecting_judge": ReflectingJudge,
    "html_injector": HtmlInjector,
    "man_in_the_middle": ManInTheMiddle,
    "connect_refuser": ConnectRefuser,
    "tunnel_rewriter": TunnelRewriter,
    "page_refuser": PageRefuser,
}


@contextlib.asynccontextmanager
async def liar(kind: str, host: str) -> AsyncIterator[Liar]:
    proxy = LIARS[kind](host, Grade.ELITE)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
