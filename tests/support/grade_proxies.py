"""Small real HTTP forward proxies on loopback, one per anonymity grade, and a black hole.

Each listens on its own 127.0.0.x and dials out from that same address, so a judge sees the
proxy's address as the origin (not 127.0.0.1, which is the test host's "real" address):

- ``transparent`` adds ``X-Forwarded-For: <client address>``,
- ``anonymous`` adds ``Via: 1.1 grade-proxy`` only,
- ``elite`` adds nothing,
- ``broken`` answers 502 to every request (it reaches nothing).

They handle absolute-form requests (one per connection) and CONNECT tunnels, and can demand Basic
credentials (407 otherwise).  ``black_hole`` accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_HOP_BY_HOP = {"proxy-authorization", "proxy-connection", "connection", "keep-alive", "te", "upgrade"}


class Grade(enum.StrEnum):
    TRANSPARENT = "transparent"
    ANONYMOUS = "anonymous"
    ELITE = "elite"
    BROKEN = "broken"


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, close_dst: bool) -> None:
    """Copy until EOF, then half-close (or close) the other side."""
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if close_dst or not dst.can_write_eof():
                dst.close()
            else:
                dst.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1)


async def _stop_server(server: asyncio.AbstractServer, writers: set[asyncio.StreamWriter]) -> None:
    """Stop listening, drop the connections still open, wait (bounded) for the server to close."""
    server.close()
    for writer in list(writers):
        writer.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 2)


@dataclass
class GradeProxy:
    host: str
    grade: Grade
    auth: tuple[str, str] | None = None
    port: int = 0
    server: asyncio.AbstractServer | None = field(default=None, repr=False)
    seen: list[str] = field(default_factory=list)  # request lines received
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)

    def url(self, scheme: str = "http") -> str:
        userinfo = f"{self.auth[0]}:{self.auth[1]}@" if self.auth else ""
        return f"{scheme}://{userinfo}{self.host}:{self.port}"

    async def start(self) -> GradeProxy:
        self.server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        await _stop_server(self.server, self._writers)

    def _authorized(self, headers: list[tuple[str, str]]) -> bool:
        if self.auth is None:
            return True
        expected = "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return any(n.lower() == "proxy-authorization" and v == expected for n, v in headers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, version = request_line.split(" ", 2)
        self.seen.append(request_line)
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines if line)]
        if not self._authorized(headers):
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="grade"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
            )
            return
        if self.grade is Grade.BROKEN:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            dest = (host.strip("[]"), int(port))
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            dest = (parts.hostname, parts.port or 80)
        try:
            up_reader, up_writer = await asyncio.open_connection(*dest, local_addr=(self.host, 0))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(
                    self._forward_head(method, target, version, headers, writer).encode("latin-1")
                )
            await asyncio.gather(
                _pump(reader, up_writer, close_dst=False),
                _pump(up_reader, writer, close_dst=True),
            )
        finally:
            await _close(up_writer)

    def _forward_head(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[str, str]],
        client: asyncio.StreamWriter,
    ) -> str:
        parts = urlsplit(target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        out = [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP]
        if self.grade is Grade.TRANSPARENT:
            out.append(("X-Forwarded-For", client.get_extra_info("peername")[0]))
        elif self.grade is Grade.ANONYMOUS:
            out.append(("Via", "1.1 grade-proxy"))
        out.append(("Connection", "close"))
        return f"{method} {path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in out) + "\r\n"


async def start_grade_proxy(
    grade: Grade | str, host: str = "127.0.0.2", auth: tuple[str, str] | None = None
) -> GradeProxy:
    return await GradeProxy(host, Grade(grade), auth).start()


@dataclass
class BlackHole:
    """Accepts connections, reads nothing, answers nothing."""

    host: str = "127.0.0.1"
    port: int = 0
    server: asyncio.AbstractServer | None = field(default=None, repr=False)
    accepted: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> BlackHole:
        self.server = await asyncio.start_server(self._hold, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)  # kept open until stop()

    async def stop(self) -> None:
        assert self.server is not None
        await _stop_server(self.server, self._writers)


@contextlib.asynccontextmanager
async def grade_proxy(
    grade: Grade | str, host: str = "127.0.0.2", auth: tuple[str, str] | None = None
) -> AsyncIterator[GradeProxy]:
    proxy = await start_grade_proxy(grade, host, auth)
    try:
        yield proxy
    finally:
        await proxy.stop()


@contextlib.asynccontextmanager
async def black_hole(host: str = "127.0.0.1") -> AsyncIterator[BlackHole]:
    hole = await BlackHole(host).start()
    try:
        yield hole
    finally:
        await hole.stop()


@dataclass
class Microsocks:
    """A microsocks SOCKS5 server (Debian package) in a subprocess.

    Unlike pproxy, which says "granted" before it dials, microsocks dials first and reports a
    refused target in the SOCKS reply: the server a handshake check must catch out.
    """

    host: str
    port: int
    process: asyncio.subprocess.Process

    def url(self, scheme: str = "socks5") -> str:
        return f"{scheme}://{self.host}:{self.port}"


def microsocks_available() -> bool:
    return shutil.which("microsocks") is not None


@contextlib.asynccontextmanager
async def microsocks(host: str = "127.0.0.7") -> AsyncIterator[Microsocks]:
    from tests.support.upstreams import free_port

    port = free_port(host)
    process = await asyncio.create_subprocess_exec(
        "microsocks",
        "-i",
        host,
        "-p",
        str(port),
        "-b",
        host,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_listening(host, port, process)
        yield Microsocks(host, port, process)
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def _wait_listening(host: str, port: int, process: asyncio.subprocess.Process) -> None:
    """Poll until the port accepts (or the process died): readiness, not a fixed sleep."""
    for _ in range(500):
        if process.returncode is not None:
            raise RuntimeError(f"microsocks exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return
    raise RuntimeError("microsocks did not start listening")
