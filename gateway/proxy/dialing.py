"""Step 5 of a request, dial or reuse: a connection that carries the request to its target.

Where a request goes decides how it is dialed (glider's one dialer per protocol):

* through an HTTP upstream: a TCP connection to it (TLS first for an ``https://`` one), then ``CONNECT target`` so the upstream only
  relays bytes (origin-form requests ride it); an upstream that refuses CONNECT to that port (many
  allow only 443) is remembered and gets absolute-form requests on a plain connection instead;
* through a SOCKS4/5 upstream: python-socks does the handshake and hands over the socket, which
  becomes a transport with ``loop.create_connection(sock=...)``;
* ``fallback = "direct"``: the target itself, never a private address unless ``direct_allow`` says so.

Every way ends in an ``UpstreamConnection`` (callbacks from there on), tied to its target and pooled
under ``(upstream id, host, port)``.  The dial is the only coroutine of a request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from gateway.proxy import http1
from gateway.proxy.admission import Admitter
from gateway.proxy.connection import ConnectionPool, UpstreamConnection
from gateway.proxy.intercept import Site
from gateway.proxy.refusals import Refusal
from gateway.proxy.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    local_or,
    open_socks,
    proxy_authorization,
    tls_for,
    tls_open_error,
)
from pool.models import Proxy

__all__ = ["Dialer", "Plan"]

# CONNECT answers that mean "not to this port": forward absolute-form requests instead
_NO_TUNNEL = frozenset({400, 403, 405, 501})


class Plan:
    """How one attempt reaches its target: the pool key, whether the upstream sees absolute form, and
    (``site``: an intercepted https request) the TLS to the site on top of the tunnel, keyed by its name."""

    __slots__ = ("absolute", "key", "proxy", "site")

    def __init__(self, proxy: Proxy | None, host: str, port: int, absolute: bool, site: Site | None = None) -> None:
        self.proxy = proxy
        self.absolute = absolute
        self.site = site
        self.key = (proxy.id if proxy is not None else None, host, port, absolute if site is None else site.name)


class Dialer:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: ConnectionPool,
        admitter: Admitter,
        connect_timeout: float,
        max_head: int,
        upstream_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.upstream_tls = upstream_tls  # for https:// upstreams (config.tls.upstream_tls_context)
        self.pool = pool
        # reuse(plan.key): an idle connection for a plan, or None; the pool's own method, bound here so
        # the everyday request pays no extra call for it
        self.reuse: Callable[[object], UpstreamConnection | None] = pool.acquire
        self.admitter = admitter
        self.connect_timeout = connect_timeout
        self.max_head = max_head
        self.no_tunnel: set[int] = set()  # HTTP upstreams that refuse CONNECT to plain-HTTP ports

    def plan(self, proxy: Proxy | None, host: str, port: int, tunnel_only: bool, site: Site | None = None) -> Plan:
        if site is not None:
            return Plan(proxy, host, port, False, site)
        absolute = (
            not tunnel_only
            and proxy is not None
            and (proxy.tunnels is False or proxy.id in self.no_tunnel)  # known not to carry CONNECT
            and not proxy.protocol.is_socks
        )
        return Plan(proxy, host, port, absolute)

    def _new(self, key: object) -> UpstreamConnection:
        return UpstreamConnection(self.loop, key, self.max_head, self.pool)

    async def dial(self, plan: Plan, host: str, port: int, tunnel_only: bool = False) -> UpstreamConnection:
        """A fresh connection for ``plan``; raises ``UpstreamError`` (or ``Refusal`` for a direct target
        not allowed, or a site whose certificate is not trusted).  An HTTP upstream refusing CONNECT to
        the port switches the plan to absolute form (unless ``tunnel_only``: a client's CONNECT has no
        other way, nor an intercepted request, whose TLS to the site rides the tunnel)."""
        site = plan.site
        if site is None:
            return await self._dial(plan, host, port, tunnel_only)
        conn = await self._dial(plan, host, port, True)
        return await self._site_tls(conn, site, f"{host}:{port}")

    async def _site_tls(self, conn: UpstreamConnection, site: Site, target: str) -> UpstreamConnection:
        """TLS to the site on top of the tunnel (SNI: the name the client asked for), verified by the
        site context: an untrusted certificate is the client's 502, never a silent pass."""
        transport = conn.transport
        assert transport is not None
        try:
            async with asyncio.timeout(self.connect_timeout):
                tls = await self.loop.start_tls(transport, conn, site.context, server_hostname=site.name)
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            why = exc.verify_message or exc.reason or "verification failed"
            raise Refusal(502, f"site certificate not trusted: {why}", "upstream_error") from None
        except TimeoutError:
            conn.close()
            raise UpstreamTimeout("TLS to the site timed out", target=target) from None
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            conn.close()
            why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
            raise UpstreamError(f"TLS to the site failed: {str(why).lower()}", "tls", target=target) from None
        except BaseException:
            conn.close()
            raise
        if tls is None:  # the connection closed during the handshake
            conn.close()
            raise UpstreamError("the site closed the connection during TLS", "reset", target=target)
        conn.transport = tls  # type: ignore[assignment]
        return conn

    async def _dial(self, plan: Plan, host: str, port: int, tunnel_only: bool) -> UpstreamConnection:
        proxy = plan.proxy
        if proxy is None:
            return await self._direct(plan, host, port)
        if proxy.protocol.is_socks:
            sock = await open_socks(proxy.upstream, host, port, self.connect_timeout)
            try:
                _, conn = await self.loop.create_connection(lambda: self._new(plan.key), sock=sock)
            except BaseException:
                sock.close()
                raise
            return conn
        tls = tls_for(proxy.upstream, self.upstream_tls)
        conn = await self._tcp(proxy.host, proxy.port, plan.key, "http upstream", tls)
        if plan.absolute:
            return conn
        request = http1.connect_request_head(host, port, extra=proxy_authorization(proxy.upstream))
        try:
            async with asyncio.timeout(self.connect_timeout):
                status = await conn.start_tunnel(request, early_ok=tunnel_only and plan.site is None)
        except TimeoutError:  # connected, then no answer: the upstream is still dialing the target
            conn.close()
            raise UpstreamTimeout("upstream did not answer CONNECT in time", target=f"{host}:{port}") from None
        except BaseException:
            conn.close()
            raise
        if status == 200:
            return conn
        conn.close()
        if not tunnel_only and (status in _NO_TUNNEL or 200 < status < 300):
            self.no_tunnel.add(proxy.id)
            plan.absolute = True
            plan.key = (proxy.id, host, port, True)
            return await self._tcp(proxy.host, proxy.port, plan.key, "http upstream", tls)
        target = f"{host}:{port}"
        if status == 0:
            raise UpstreamError("upstream closed the connection during CONNECT", "reset", target=target)
        raise UpstreamRefused(f"upstream answered CONNECT with {status}", "http_status", status, target=target)

    async def _tcp(
        self, host: str, port: int, key: object, what: str, tls: ssl.SSLContext | None = None
    ) -> UpstreamConnection:
        """A TCP connection (TLS with ``tls``: an ``https://`` upstream) carrying an ``UpstreamConnection``."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: self._new(key), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise UpstreamTimeout(f"{what} timed out") from None
        except OSError as exc:
            failed = tls_open_error(exc) if tls is not None else None
            if failed is not None:
                raise failed from None
            text = (exc.strerror or str(exc) or type(exc).__name__).lower()
            reason = "reset" if "reset" in text else "refused"
            raise local_or(exc, UpstreamConnectError(f"{what} unreachable: {text}", reason)) from None
        return conn

    async def _direct(self, plan: Plan, host: str, port: int) -> UpstreamConnection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            raise UpstreamError(f"cannot resolve {host}", "dns") from None
        address = infos[0][4][0]
        if port in self.admitter.own.ports and self.admitter.own.loops(address, port):  # a name that resolves to us
            raise Refusal(403, "request loops back to the gateway itself", "forbidden")
        if not self.admitter.direct_allowed(address):
            raise Refusal(403, f"direct connection to {host} ({address}) is not allowed", "forbidden")
        try:
            return await self._tcp(address, port, plan.key, f"direct connection to {host}")
        except UpstreamConnectError as exc:  # (a LocalShortage goes on as it is)
            raise UpstreamError(exc.message.replace(" unreachable: ", " failed: "), "refused") from None
