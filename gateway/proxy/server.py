"""The gateway: accept clients, admit them, and the policy both request paths share.

A request costs: read and parse the head, ``selector.pick`` (in memory), optionally
``accounts.charge`` (in memory), dial or reuse an upstream connection, stream.  No disk, no SQL,
no log line at INFO.  Every connection starts on the callback fast path (``gateway.proxy.fastpath``);
what that path does not take is handed to the stream path (``gateway.proxy.streampath``).  Target checks,
authentication, picking the next upstream and passive-health reports live here, once, for both.
On shutdown, idle keep-alive clients are closed at once and busy ones get ``drain_timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from config import Settings
from config.tls import upstream_tls_context
from gateway.proxy import http1
from gateway.proxy.fastpath import ClientProtocol, Exchange, UpstreamProtocol, open_error
from gateway.proxy.loops import OwnAddresses
from gateway.proxy.refusals import AUTH_REALM, Admission, NeedsVerification, Picked, Refusal
from gateway.proxy.routing import Credentials, RouteError, parse_proxy_authorization, route_for
from gateway.proxy.streampath import ClientReader, StreamPath, _Client
from gateway.proxy.upstream import (
    ConnectionPool,
    UpstreamError,
    UpstreamRefused,
    proxy_authorization,
    tls_for,
)
from pool.models import Proxy
from pool.selector import Route, Selector
from pool.tasks import TaskSet

__all__ = ["GatewayServer", "Refusal"]

log = logging.getLogger("proxy_pool.gateway")
ANY_ROUTE = Route()
_ANYONE_ANYWHERE = Admission(None, ANY_ROUTE, 0)  # the admission of every request without auth or routing
access_log = logging.getLogger("proxy_pool.access")



class Accounts:  # the shape the gateway needs from pool.accounts (structural)
    def check_cached(self, username: str, password: str) -> str | None: ...
    async def verify(self, username: str, password: str, client: str = "") -> str | None: ...
    def charge(self, user: str, cost: int) -> bool: ...
    def refund(self, user: str, cost: int) -> None: ...


class GatewayServer(StreamPath):
    def __init__(
        self,
        settings: Settings,
        selector: Selector,
        *,
        metrics: object | None = None,
        accounts: Accounts | None = None,
        own_addresses: set[tuple[str, int]] | None = None,
    ) -> None:
        self.settings = settings
        self.gw = settings.gateway
        self.selector = selector
        self.metrics = metrics
        self.accounts = accounts if settings.gateway.auth == "users" else None
        self.upstream_tls = upstream_tls_context(settings.checker.upstream_tls_verify)
        self.pool = ConnectionPool(per_key=self.gw.upstream_pool_size, idle_timeout=self.gw.upstream_idle_timeout)
        self._own = OwnAddresses(own_addresses or ())
        self._server: asyncio.AbstractServer | None = None
        self.fast_pool = ConnectionPool(per_key=self.gw.upstream_pool_size, idle_timeout=self.gw.upstream_idle_timeout)
        self._clients: set[ClientProtocol] = set()  # admitted client connections, either path
        self._streams: dict[ClientProtocol, _Client] = {}  # those handed to the stream path
        self._waiting: deque[tuple[ClientProtocol, asyncio.TimerHandle]] = deque()
        self._fast_eligible_base = not self.gw.retry_on_status
        self.no_tunnel: set[int] = set()  # HTTP upstreams that refuse CONNECT to plain-HTTP ports
        self._closing = False
        self._tasks = TaskSet()
        self._allowed_ports = None if self.gw.allowed_connect_ports == "*" else frozenset(self.gw.allowed_connect_ports)
        self._retry_status = frozenset(self.gw.retry_on_status)
        self._direct_allow = [ipaddress.ip_network(n, strict=False) for n in self.gw.direct_allow]
        self._on_bytes: Callable[[str, int], None] | None = getattr(metrics, "bytes", None)
        self._request_done: Callable[[str, str, float], None] | None = getattr(metrics, "request_done", None)
        self._access_log = settings.log.access_log
        # the loop, kept so hot-path callbacks skip get_running_loop() (a getpid() call each, on 3.11)
        try:
            self.loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None  # type: ignore[assignment]  # set by start()

    # lifecycle ----------------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        host, port = self.gw.host_port
        self.loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientProtocol(self), host, port, backlog=1024, reuse_address=True
        )
        bound = self._server.sockets[0].getsockname()
        self.add_own_address(bound[0], bound[1])
        self._tasks.spawn(self._prune_loop(), name="gateway-pool-prune")
        return bound[0], bound[1]

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    def add_own_address(self, host: str, port: int) -> None:
        self._own.add(host, port)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, close idle clients, give busy ones ``drain_timeout``, then cut."""
        timeout = self.gw.drain_timeout if drain_timeout is None else drain_timeout
        self._closing = True
        if self._server is not None:
            self._server.close()
        for waiting, timer in list(self._waiting):
            timer.cancel()
            waiting.close()
        self._waiting.clear()
        for client in list(self._clients):
            if client in self._streams:
                streamed = self._streams[client]
                if not streamed.busy and streamed.task is not None:
                    streamed.task.cancel()
            elif not client.busy:
                client.close()
        busy = [self._done_of(c) for c in self._clients]
        busy = [f for f in busy if f is not None and not f.done()]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for client in list(self._clients):
            streamed = self._streams.get(client)
            if streamed is not None and streamed.task is not None:
                streamed.task.cancel()
            else:
                client.close()
        remaining = [f for f in (self._done_of(c) for c in list(self._clients)) if f is not None]
        if remaining:
            await asyncio.wait(remaining, timeout=2.0)
        await self._tasks.close()
        self.pool.close()
        self.fast_pool.close()
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def idle_upstream_connections(self) -> int:
        return len(self.pool) + len(self.fast_pool)

    def close_idle_upstreams(self) -> None:
        """Drop every kept-alive upstream connection (tests; an operator's reset)."""
        self.pool.close()
        self.fast_pool.close()

    def _done_of(self, client: ClientProtocol) -> asyncio.Future[Any] | None:
        streamed = self._streams.get(client)
        if streamed is not None:
            return streamed.task
        return client.done

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.gw.upstream_idle_timeout / 2))
            self.pool.prune()
            self.fast_pool.prune()

    # connections --------------------------------------------------------------------------
    def admit(self, client: ClientProtocol) -> None:
        """A new client: served at once while under ``max_connections``, else it waits a moment."""
        if len(self._clients) < self.gw.max_connections:
            self._open(client)
            return
        if client.transport is not None:
            client.transport.pause_reading()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(1.0, self._turn_away, client)
        self._waiting.append((client, timer))

    def _open(self, client: ClientProtocol) -> None:
        self._clients.add(client)
        if self.metrics is not None:
            self.metrics.connection_opened()  # type: ignore[attr-defined]
        if client.transport is not None:
            client.transport.resume_reading()
        client.start()

    def _turn_away(self, client: ClientProtocol) -> None:
        self._waiting = deque((c, t) for c, t in self._waiting if c is not client)
        client.write(http1.simple_response(503, "gateway busy: too many connections", close=True))
        self.count_request("?", "overloaded", 0.0)
        client.close()

    def release(self, client: ClientProtocol) -> None:
        """A client connection ended (on either path); a waiting one may take its slot."""
        if client not in self._clients:
            self._waiting = deque((c, t) for c, t in self._waiting if c is not client)
            return
        self._clients.discard(client)
        self._streams.pop(client, None)
        if self.metrics is not None:
            self.metrics.connection_closed()  # type: ignore[attr-defined]
        while self._waiting and not self._closing:
            waiting, timer = self._waiting.popleft()
            timer.cancel()
            if not waiting.closed:
                self._open(waiting)
                break

    def hand_over(
        self, client: ClientProtocol, head: http1.RequestHead, rest: bytes, admission: Admission | None,
        picked: Picked | None = None,
    ) -> None:
        """Continue a connection on the stream path: its transport gets a StreamReaderProtocol."""
        loop = asyncio.get_running_loop()
        transport = client.transport
        assert transport is not None
        reader = ClientReader(limit=self.gw.max_header_bytes + 1024, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if rest:
            reader.feed_data(rest)
        transport.resume_reading()
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        streamed = _Client(reader, writer, client.peer, busy=True)
        self._streams[client] = streamed
        streamed.task = self._tasks.spawn(
            self._run_streams(client, streamed, head, admission, picked), name="client-streams"
        )

    async def _run_streams(
        self, client: ClientProtocol, streamed: _Client, head: http1.RequestHead, admission: Admission | None,
        picked: Picked | None,
    ) -> None:
        try:
            await self._serve(streamed, first=(head, admission, picked))
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("unexpected error on client %s", streamed.peer)
        finally:
            self.release(client)
            if not streamed.writer.is_closing():
                streamed.writer.close()

    # the fast path's requests -------------------------------------------------------------
    def fast_request(self, client: ClientProtocol, head: http1.RequestHead) -> None:
        """Admission (target, auth, credits) for a request read by the callback path, then serve it."""
        try:
            admission = self.admit_request(head)
        except Refusal as refusal:
            client.refuse(refusal, head)
            return
        except NeedsVerification:
            client.to_streams(head, None)  # the stream path awaits the slow password check
            return
        if (
            self._fast_eligible_base
            and not head.is_connect
            and head.version == "HTTP/1.1"
            and not head.expect_continue
            and head.upgrade is None
            and not head.chunked
            and not head.content_length
            and head.method in http1.IDEMPOTENT  # the callback path retries after sending; others go where that is ruled out
        ):
            client.begin(Exchange(client, head, admission))
        else:
            client.to_streams(head, admission)

    def spawn_connect(
        self, exchange: Exchange, proxy: Proxy, key: object, tunnel: tuple[str, int] | None
    ) -> None:
        self._tasks.spawn(self._fast_connect(exchange, proxy, key, tunnel), name="upstream-connect")

    async def _fast_connect(
        self, exchange: Exchange, proxy: Proxy, key: object, tunnel: tuple[str, int] | None
    ) -> None:
        """A new upstream connection; with ``tunnel``, CONNECTed through to that target.

        Plain HTTP rides kept-alive tunnels to the target: the upstream only relays bytes, and each
        request still picks its upstream.  Upstreams that refuse CONNECT to the port (many allow
        only 443) are remembered in ``no_tunnel`` and get absolute-form requests instead.
        """
        loop = asyncio.get_running_loop()
        tls = None
        try:
            async with asyncio.timeout(self.gw.connect_timeout):
                tls = tls_for(proxy.upstream, self.upstream_tls)
                _, conn = await loop.create_connection(
                    lambda: UpstreamProtocol(self, key), proxy.host, proxy.port,
                    ssl=tls, server_hostname=proxy.host if tls else None,
                )
                status = 200
                if tunnel is not None:
                    request = http1.connect_request_head(*tunnel, extra=proxy_authorization(proxy.upstream))
                    status = await conn.start_tunnel(request)
        except (OSError, TimeoutError) as exc:
            exchange.connect_failed(open_error(exc, tls is not None))
            return
        except asyncio.CancelledError:
            if "conn" in locals():
                conn.close()
            raise
        if status == 200:
            exchange.connected(conn)
        elif status in (400, 403, 405, 501) or 200 < status < 300:
            exchange.no_tunnel(proxy)
        elif status == 0:
            exchange.connect_failed(
                UpstreamError("upstream closed the connection during CONNECT", "reset", target=exchange.target)
            )
        else:
            exchange.connect_failed(
                UpstreamRefused(f"upstream answered CONNECT with {status}", "http_status", status, target=exchange.target)
            )

    def count_request(self, method: str, outcome: str, seconds: float) -> None:
        if self._request_done is not None:
            self._request_done(method, outcome, seconds)
        if self._access_log:
            access_log.info("%s %s %.1fms", method, outcome, seconds * 1000)

    def count_refusal(self, method: str, refusal: Refusal, seconds: float) -> None:
        self.count_request(method, refusal.outcome, seconds)

    # the policy both paths share ----------------------------------------------------------
    def admit_request(self, head: http1.RequestHead, verified: str | None = None) -> Admission:
        """Check the target, authenticate, and charge: once per request, before any dialing.

        Raises ``NeedsVerification`` for credentials the accounts have not verified yet: then
        ``admit_request_slow`` does the slow check without blocking the loop."""
        self._check_target(head)
        user, route = self._authorize(head, verified)
        if user is None and route is ANY_ROUTE:
            return _ANYONE_ANYWHERE
        cost = self.settings.credits.cost_per_request if user is not None else 0
        if user is not None and cost and not self.accounts.charge(user, cost):  # type: ignore[union-attr]
            raise Refusal(402, "credits exhausted: ask the operator for a top-up", "payment_required")
        return Admission(user, route, cost)

    def refund_own_failure(self, admission: Admission, refusal: Refusal) -> None:
        """Our own 5xx (no proxy, every attempt failed) costs the user nothing, when so configured."""
        if (
            admission.user is not None
            and admission.cost
            and refusal.status >= 500
            and self.settings.credits.refund_gateway_failures
        ):
            self.accounts.refund(admission.user, admission.cost)  # type: ignore[union-attr]

    def _check_target(self, head: http1.RequestHead) -> None:
        if head.is_connect and self._allowed_ports is not None and head.port not in self._allowed_ports:
            raise Refusal(403, f"CONNECT to port {head.port} is not allowed", "forbidden")
        if head.port in self._own.ports and self._own.loops(head.host, head.port):
            raise Refusal(403, "request loops back to the gateway itself", "forbidden")

    async def admit_request_slow(self, head: http1.RequestHead, peer: str) -> Admission:
        """``admit_request``, awaiting the slow password check (a worker thread) on a cache miss;
        failures are throttled per client address (``peer`` is ``host:port``)."""
        try:
            return self.admit_request(head)
        except NeedsVerification as need:
            assert self.accounts is not None
            user = await self.accounts.verify(need.name, need.password, client=peer.rpartition(":")[0])
        if user is None:
            raise Refusal(407, "proxy authentication failed", "auth_required", AUTH_REALM)
        return self.admit_request(head, verified=user)

    def _authorize(self, head: http1.RequestHead, verified: str | None = None) -> tuple[str | None, Route]:
        if head.proxy_authorization is None and not head.pool_params and self.gw.auth == "none":
            return None, ANY_ROUTE  # the common case: nothing asked, nothing to check
        creds: Credentials | None = parse_proxy_authorization(head.proxy_authorization)
        if self.gw.auth == "users":
            if creds is None:
                raise Refusal(407, "proxy authentication required", "auth_required", AUTH_REALM)
            assert self.accounts is not None
            # who first (407 for strangers, whatever they ask), then what they ask (400 naming the part)
            name = creds.username.split("-", 1)[0]
            user = verified if verified == name else self.accounts.check_cached(name, creds.password)
            if user is None:
                raise NeedsVerification(name, creds.password)
            try:
                _, route = route_for(creds.username, head.pool_params, with_name=True)
            except RouteError as exc:
                raise Refusal(400, exc.message, "bad_request") from None
            return user, route
        try:
            _, route = route_for(creds.username if creds else None, head.pool_params, with_name=False)
        except RouteError as exc:
            raise Refusal(400, exc.message, "bad_request") from None
        return None, route

    def _next_upstream(
        self, route: Route, tried: set[int], host: str, *, tunnel: bool = False
    ) -> tuple[bool, Proxy | None]:
        """The next upstream to try: (True, proxy), (True, None) for the direct fallback, or
        (False, None) when the attempts are used up; raises the 503 when nothing matched at all.
        ``tunnel``: for a CONNECT, never an upstream known not to carry tunnels."""
        proxy = self.selector.pick(route, exclude=tried, host=host, tunnel=tunnel)
        if proxy is not None:
            tried.add(proxy.id)
            return True, proxy
        if tried:
            return False, None
        if self.gw.fallback != "direct":
            raise self._no_proxy(route)
        return True, None

    def _no_proxy(self, route: Route) -> Refusal:
        what = route.describe()
        if what == "any":
            return Refusal(503, "no active proxy in the pool yet", "no_proxy")
        return Refusal(503, f"no active proxy for {what}", "no_proxy")

    def _report(self, proxy: Proxy | None, ok: bool, exc: UpstreamError | None = None) -> None:
        """Passive health: the upstream's own failure, or (``exc.target``) one about that target. An
        upstream that refused a CONNECT (``exc.refuses_tunnel``) is not failing: it gets no tunnel again
        until its next check."""
        if proxy is not None:
            if exc is not None and getattr(exc, "refuses_tunnel", False):
                self.selector.refused_tunnel(proxy)
            else:
                self.selector.report(proxy, ok, target=None if exc is None else exc.target)
        if exc is not None and self.metrics is not None:
            self.metrics.upstream_failure(exc.reason)  # type: ignore[attr-defined]

    def _debug_headers(self, proxy: Proxy | None) -> list[tuple[str, str]]:
        if not self.gw.debug_headers:
            return []
        return [("X-Proxy-Pool-Upstream", str(proxy.id) if proxy else "direct")]
