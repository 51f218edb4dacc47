"""Real upstream proxies and origins on loopback for tests.

Each pproxy upstream listens on its own 127.0.0.x and, thanks to pproxy's ``@in`` bind rule,
leaves from that same address: an origin that echoes the peer address tells which upstream carried
a request.  Nothing here talks to anything but 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pproxy
from aiohttp import web


@dataclass
class Upstream:
    host: str
    port: int
    server: asyncio.AbstractServer
    schemes: str

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}"

    async def stop(self) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            self.server.close_clients()  # type: ignore[attr-defined]  # 3.13+
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)


def only_loopback(host: str) -> bool:
    """pproxy's block rule: refuse every target off this machine (no test may reach out)."""
    if host in ("localhost", "::1"):
        return False
    return not host.startswith("127.")


async def start_pproxy(host: str = "127.0.0.2", schemes: str = "http+socks4+socks5", auth: str = "") -> Upstream:
    """An in-process pproxy server on ``host`` that dials out from ``host``."""
    userinfo = f"#{auth}" if auth else ""
    server = pproxy.Server(f"{schemes}://{host}:0/@in{userinfo}")
    srv = await server.start_server({"rserver": [], "verbose": lambda *a, **k: None, "block": only_loopback})
    port = srv.sockets[0].getsockname()[1]
    return Upstream(host, port, srv, schemes)


@contextlib.asynccontextmanager
async def pproxy_upstreams(count: int, schemes: str = "http+socks4+socks5") -> AsyncIterator[list[Upstream]]:
    ups = [await start_pproxy(f"127.0.0.{i + 2}", schemes) for i in range(count)]
    try:
        yield ups
    finally:
        for up in ups:
            await up.stop()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (connections are refused)."""
    return free_port(host)


async def echo_peer(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "peer": request.remote,
            "method": request.method,
            "path": request.path_qs,
            "headers": dict(request.headers),
        }
    )


async def echo_body(request: web.Request) -> web.StreamResponse:
    """Streams the request body back with its length and sha256 in headers-free JSON."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest(), "peer": request.remote})


def origin_app() -> web.Application:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/echo", echo_peer)
    app.router.add_route("*", "/body", echo_body)
    app.router.add_get("/", echo_peer)

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            await resp.write(block[:n])
            sent += n
        return resp

    app.router.add_get("/big", big)
    return app


async def start_tls_pproxy(ca: object, host: str = "127.0.0.2", schemes: str = "http+ssl") -> Upstream:
    """A pproxy speaking HTTP over TLS (an ``https://`` upstream), its certificate issued by ``ca``
    (a ``trustme.CA``) for ``host``.  ``schemes`` ``http+ssl`` (pproxy's name for a TLS listener)."""
    server = pproxy.Server(f"{schemes}://{host}:0/@in")
    ca.issue_cert(host).configure_cert(server.sslserver)  # type: ignore[attr-defined]
    srv = await server.start_server({"rserver": [], "verbose": lambda *a, **k: None, "block": only_loopback})
    port = srv.sockets[0].getsockname()[1]
    return Upstream(host, port, srv, schemes)
