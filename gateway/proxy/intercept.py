"""HTTPS interception (``gateway.intercept_listen``): what the one request path needs to serve inside TLS.

On the interception port a client's CONNECT (or SOCKS CONNECT) is answered at once, without an
upstream; then the client connection (``gateway.proxy.client``) reads what comes:

* a host matching ``gateway.intercept_bypass``: never answered early, a plain tunnel as on the main port;
* bytes that are not a TLS ClientHello (``gateway.proxy.tlshello``): a raw relay through a picked upstream;
* a ClientHello: its name (SNI, else the CONNECT host) gets a leaf from the CA (``gateway.proxy.certs``,
  minted off the loop, cached), the handshake runs under ``head_timeout``, and from then on the client
  connection serves HTTP/1.1 requests inside the TLS session exactly as plain HTTP ones -- each an
  ``Exchange`` that picks its own upstream -- towards ``Site`` (the target, and the TLS context that
  verifies it).  Upstream connections are a tunnel through the picked upstream with TLS to the site on
  top (``gateway.proxy.dialing``), pooled per (upstream, host, port, name), never shared across sites.

Nothing on the main port is ever intercepted: only connections accepted on this port carry an
``Interceptor``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import ssl
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.settings import GatewaySettings
from gateway.proxy import fasthead, http1
from gateway.proxy.certs import CertificateAuthority, LeafStore
from gateway.proxy.errors import BadRequest

__all__ = ["Interceptor", "Site", "intercepted_head", "terminate"]

ESTABLISHED = http1.CONNECT_ESTABLISHED


@dataclass(frozen=True, slots=True)
class Site:
    """Where the requests of one intercepted TLS session go: the CONNECT target, the name the client
    asked for (the TLS name towards the site, and part of the pool key), the context verifying it."""

    host: str
    port: int
    name: str
    context: ssl.SSLContext

    @property
    def authority(self) -> str:
        """The Host its requests are sent with: the name the client asked for in TLS (a SOCKS client that
        resolved the name itself connects to an address, yet the site wants its name), else the target."""
        return http1.format_authority(self.name, self.port, default_port=443)


def site_context(verify: bool | str) -> ssl.SSLContext:
    """Towards sites: as a browser verifies (system store, name, expiry) unless the operator said
    ``false`` (nothing checked) or gave a CA bundle; ALPN ``http/1.1`` only."""
    if verify is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif verify is True:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.create_default_context(cafile=verify)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Interceptor:
    """The interception port's shared state: leaves per name, the site context, the bypass globs."""

    def __init__(self, gw: GatewaySettings, ca: CertificateAuthority) -> None:
        self.leaves = LeafStore(ca)
        self.verify = site_context(gw.intercept_verify)
        self._bypass = tuple(glob.lower() for glob in gw.intercept_bypass)

    def bypassed(self, host: str) -> bool:
        """Whether ``host`` (a name or an address) is tunnelled end to end."""
        if not self._bypass:
            return False
        host = host.lower()
        return any(fnmatch.fnmatchcase(host, glob) for glob in self._bypass)

    def site(self, host: str, port: int, sni: str | None) -> Site:
        return Site(host, port, sni or host, self.verify)

    @staticmethod
    def leaf_name(host: str, sni: str | None) -> str:
        """The one name the leaf is minted for: what the client asked for in TLS, else its CONNECT host."""
        if sni:
            return sni
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return host


def terminate(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    app: asyncio.Protocol,
    context: ssl.SSLContext,
    hello: bytes,
    timeout: float,
    failed: Callable[[BaseException], None],
) -> None:
    """TLS server side on ``transport``, whose ClientHello (``hello``) was already read: the SSL protocol
    takes the transport over, is fed those bytes, and ``app.connection_made`` gets the TLS transport
    once the handshake is through; ``failed`` hears of a handshake that fails or takes over ``timeout``."""
    waiter: asyncio.Future[None] = loop.create_future()
    tls = _ssl_protocol(loop)(
        loop, app, context, waiter, server_side=True, call_connection_made=True, ssl_handshake_timeout=timeout
    )

    def done(future: asyncio.Future[None]) -> None:
        exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
        if exc is not None:
            failed(exc)

    waiter.add_done_callback(done)
    transport.set_protocol(tls)
    tls.connection_made(transport)
    if hello:
        view = tls.get_buffer(len(hello))
        view[: len(hello)] = hello
        tls.buffer_updated(len(hello))
    transport.resume_reading()


def _ssl_protocol(loop: asyncio.AbstractEventLoop) -> Any:
    """The loop's own TLS protocol: uvloop's (compiled; measured about a third cheaper per request in
    bench/intercept_bench.py) on a uvloop loop, else asyncio's.  Both take the bytes already read the
    same way (``get_buffer`` / ``buffer_updated``: they are buffered protocols)."""
    if type(loop).__module__.startswith("uvloop"):
        from uvloop.loop import SSLProtocol  # type: ignore[import-not-found]

        return SSLProtocol
    return sslproto.SSLProtocol


def intercepted_head(raw: bytes, site: Site) -> http1.RequestHead:
    """A request head read inside an intercepted TLS session, as the plain-HTTP path reads a proxy
    request: origin form becomes an absolute ``http://`` target on the session's authority (so the
    strict parser checks it whole), then host and port are the session's -- the Host header routes
    nothing.  Raises ``BadRequest`` (absolute form and CONNECT inside are refused)."""
    space = raw.find(b" ")
    if space <= 0 or raw[space + 1 : space + 2] != b"/":
        if raw.startswith(b"PRI * HTTP/2"):
            raise BadRequest(400, "HTTP/2 inside the intercepted session: only HTTP/1.1 is offered (ALPN)")
        raise BadRequest(400, "requests inside an intercepted session must be in origin form (GET /path)")
    absolute = b"%s http://%s%s" % (raw[:space], site.authority.encode("ascii"), raw[space + 1 :])
    head = fasthead.plain_request(absolute) or http1.parse_request_head(absolute)
    head.host = site.host
    head.port = site.port
    return head
