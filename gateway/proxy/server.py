"""Step 1 of a request, accept: the listening socket, connection slots, and an orderly stop.

A request's journey reads top to bottom, one module per step, each calling only the next ones:

    server (accept) -> client (read head) -> admission (target, auth, charge)
        -> exchange (pick, then dialing: dial or reuse via connection's pool, then relay) -> accounting

A request costs: read and parse the head, ``selector.pick`` (in memory), optionally
``accounts.charge`` (in memory), dial or reuse an upstream connection, stream.  No disk, no SQL, no
log line at INFO.  Up to ``max_connections`` clients are served at once; past that, idle keep-alive
clients and clients still in their handshake (half a head, an unfinished SOCKS greeting) are closed,
oldest first, to make room, and only then does a newcomer wait (a moment, then 503); a newcomer from an
address (an IPv6 /64) already holding ``max_handshakes_per_address`` handshakes is turned away instead,
so nobody holds the slots with half-open handshakes.  Clients never take the last descriptors: one
whose descriptor falls in the reserve (``pool.resources.descriptor_reserve``, kept for the checker, the
store and upstream dials) is admitted only by closing an idle or handshaking client, else turned away
at once.  On shutdown, idle clients are closed at once and busy ones get ``drain_timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from config import Settings, parse_host_port
from config.tls import upstream_tls_context
from gateway.proxy import http1
from gateway.proxy.accounting import Accounting
from gateway.proxy.admission import Accounts, Admitter
from gateway.proxy.bans import BanRules
from gateway.proxy.certs import CertificateAuthority
from gateway.proxy.client import ClientConnection, ClientState, Slots
from gateway.proxy.connection import ConnectionPool
from gateway.proxy.dialing import Dialer
from gateway.proxy.intercept import Interceptor
from gateway.proxy.loops import OwnAddresses
from gateway.proxy.refusals import Refusal
from gateway.proxy.services import Services
from pool.resources import descriptor_reserve, open_files_limit
from pool.selector import Selector
from pool.tasks import TaskSet

__all__ = ["GatewayServer", "Refusal"]

log = logging.getLogger("proxy_pool.gateway")


class GatewayServer(Slots):
    def __init__(
        self,
        settings: Settings,
        selector: Selector,
        *,
        metrics: object | None = None,
        accounts: Accounts | None = None,
        own_addresses: set[tuple[str, int]] | None = None,
        intercept_ca: CertificateAuthority | None = None,
    ) -> None:
        self.settings = settings
        self.gw = settings.gateway
        self.selector = selector
        self.metrics = metrics
        self.pool = ConnectionPool(per_key=self.gw.upstream_pool_size, idle_timeout=self.gw.upstream_idle_timeout)
        self._own = OwnAddresses(own_addresses or ())
        self._server: asyncio.AbstractServer | None = None
        self._socks_server: asyncio.AbstractServer | None = None  # gateway.socks_listen
        self._intercept_server: asyncio.AbstractServer | None = None  # gateway.intercept_listen
        self._clients: set[ClientConnection] = set()  # holding a slot
        self.waiting: deque[tuple[ClientConnection, asyncio.TimerHandle]] = deque()
        self._tasks = TaskSet()
        self._fd_limit = 0
        self._fd_ceiling: int | None = None  # a client whose descriptor is at or above it is in the reserve
        self._accounts = accounts
        self.intercept_ca = intercept_ca  # gateway.intercept_listen: the CA leaves are minted with
        self.interceptor: Interceptor | None = None
        if self.gw.intercept_listen:
            if intercept_ca is None:
                raise ValueError("gateway.intercept_listen is set: the gateway needs the CA (intercept_ca=)")
            self.interceptor = Interceptor(self.gw, intercept_ca)
        self.upstream_tls = upstream_tls_context(settings.checker.upstream_tls_verify)
        self.svc: Services | None = None
        try:
            self._build(asyncio.get_running_loop())
        except RuntimeError:
            pass  # built by start()

    def _build(self, loop: asyncio.AbstractEventLoop) -> Services:
        admitter = Admitter(self.settings, self._accounts, self._own)
        self.svc = Services(
            settings=self.settings,
            gw=self.gw,
            loop=loop,
            selector=self.selector,
            admitter=admitter,
            dialer=Dialer(
                loop, self.pool, admitter, self.gw.connect_timeout, self.gw.max_header_bytes, self.upstream_tls
            ),
            accounting=Accounting(self.selector, self.metrics, self.settings.log.access_log),
            bans=BanRules(self.gw),
            spawn=self._spawn,
        )
        return self.svc

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> object:
        return self._tasks.spawn(coro, name=name)

    reuse_port = False  # serve --workers N: N processes share the listening socket (SO_REUSEPORT)

    # lifecycle ----------------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        host, port = self.gw.host_port
        loop = asyncio.get_running_loop()
        svc = self.svc if self.svc is not None and self.svc.loop is loop else self._build(loop)
        self._server = await loop.create_server(
            lambda: ClientConnection(svc, self), host, port, backlog=1024, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        bound = self._server.sockets[0].getsockname()
        self.add_own_address(bound[0], bound[1])
        if self.gw.socks_listen:  # a SOCKS-only port beside the mixed one
            socks_host, socks_port = parse_host_port(self.gw.socks_listen)
            self._socks_server = await loop.create_server(
                lambda: ClientConnection(svc, self, socks_only=True), socks_host, socks_port, backlog=1024,
                reuse_address=True, reuse_port=self.reuse_port or None,
            )
            socks_bound = self._socks_server.sockets[0].getsockname()
            self.add_own_address(socks_bound[0], socks_bound[1])
        interceptor = self.interceptor
        if interceptor is not None and self.gw.intercept_listen:  # the opt-in HTTPS interception port
            intercept_host, intercept_port = parse_host_port(self.gw.intercept_listen)
            self._intercept_server = await loop.create_server(
                lambda: ClientConnection(svc, self, interceptor=interceptor), intercept_host, intercept_port,
                backlog=1024, reuse_address=True, reuse_port=self.reuse_port or None,
            )
            intercept_bound = self._intercept_server.sockets[0].getsockname()
            self.add_own_address(intercept_bound[0], intercept_bound[1])
        limit = open_files_limit()
        if limit is not None:  # clients never take the last descriptors (pool.resources)
            self._fd_limit = limit
            self._fd_ceiling = limit - descriptor_reserve(limit, self.settings.checker.concurrency)
        self._tasks.spawn(self._prune_loop(), name="gateway-pool-prune")
        return bound[0], bound[1]

    @property
    def socks_address(self) -> tuple[str, int] | None:
        """The bound ``gateway.socks_listen`` address, when there is one."""
        if self._socks_server is None:
            return None
        sock = self._socks_server.sockets[0].getsockname()
        return sock[0], sock[1]

    @property
    def intercept_address(self) -> tuple[str, int] | None:
        """The bound ``gateway.intercept_listen`` address, when there is one."""
        if self._intercept_server is None:
            return None
        sock = self._intercept_server.sockets[0].getsockname()
        return sock[0], sock[1]

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
        if self.svc is not None:
            self.svc.closing = True
        if self._server is not None:
            self._server.close()
        if self._socks_server is not None:
            self._socks_server.close()
        if self._intercept_server is not None:
            self._intercept_server.close()
        for waiting, timer in list(self.waiting):
            timer.cancel()
            waiting.close()
        self.waiting.clear()
        for client in list(self._clients):
            if client.state is ClientState.IDLE:
                client.close()
        busy = [c.done for c in self._clients if c.done is not None and not c.done.done()]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for client in list(self._clients):
            client.close()
        remaining = [c.done for c in list(self._clients) if c.done is not None and not c.done.done()]
        if remaining:
            await asyncio.wait(remaining, timeout=2.0)
        await self._tasks.close()
        self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._socks_server is not None:
            await self._socks_server.wait_closed()
        if self._intercept_server is not None:
            await self._intercept_server.wait_closed()

    @property
    def idle_upstream_connections(self) -> int:
        return len(self.pool)

    def close_idle_upstreams(self) -> None:
        """Drop every kept-alive upstream connection (tests; an operator's reset)."""
        self.pool.close()

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.gw.upstream_idle_timeout / 2))
            self.pool.prune()

    # connection slots ---------------------------------------------------------------------
    def arrived(self, client: ClientConnection) -> None:
        """A new client: served at once while under ``max_connections`` and outside the descriptor
        reserve (making room by closing the oldest idle or handshaking client if need be), else it
        waits a moment; in the reserve, nobody waits (a waiting client holds a descriptor)."""
        short = self._fd_ceiling is not None and _descriptor(client) >= self._fd_ceiling
        if short or len(self._clients) >= self.gw.max_connections:
            handshakes, oldest = self._scan(client)  # one pass over the clients, only when full
            if handshakes >= self.gw.max_handshakes_per_address:
                self._turn_away(client)
                return
            evicted = self._evict(oldest)
            if short:
                if evicted:
                    self._open(client)
                    return
                log.warning(
                    "out of descriptors for clients (limit %d, the last %d kept for checks, the store and "
                    "upstream dials): new clients turned away until some leave", self._fd_limit,
                    self._fd_limit - (self._fd_ceiling or 0),
                )
                self._turn_away(client)
                return
        if len(self._clients) < self.gw.max_connections:
            self._open(client)
            return
        if client.transport is not None:
            client.transport.pause_reading()
        timer = client.svc.loop.call_later(1.0, self._turn_away, client)
        self.waiting.append((client, timer))

    def _scan(self, client: ClientConnection | None) -> tuple[int, ClientConnection | None]:
        """How many clients from ``client``'s address (an IPv6 /64) are still in their handshake, and the
        oldest client that may be closed to make room (idle keep-alive or handshaking), if any."""
        where = _address_key(client) if client is not None else None
        handshakes = 0
        oldest: ClientConnection | None = None
        for other in self._clients:
            if other.handshaking:
                if where is not None and _address_key(other) == where:
                    handshakes += 1
            elif not other.idle:
                continue
            if oldest is None or other.idle_since < oldest.idle_since:
                oldest = other
        return handshakes, oldest

    def _evict(self, oldest: ClientConnection | None) -> bool:
        if oldest is None:
            return False
        self._release(oldest)  # its slot is free now; the close completes on the transport
        oldest.close()
        return True

    def _evict_idle(self) -> bool:
        return self._evict(self._scan(None)[1])

    def idle(self, client: ClientConnection) -> None:
        """A client went idle: someone waiting may have its slot."""
        if self.waiting and len(self._clients) >= self.gw.max_connections:
            self._evict_idle()
            self._admit_waiting()

    def _open(self, client: ClientConnection) -> None:
        self._clients.add(client)
        if self.metrics is not None:
            self.metrics.connection_opened()  # type: ignore[attr-defined]
        if client.transport is not None:
            client.transport.resume_reading()
        client.start()

    def _turn_away(self, client: ClientConnection) -> None:
        self.waiting = deque((c, t) for c, t in self.waiting if c is not client)
        client.write(http1.simple_response(503, "gateway busy: too many connections", close=True))
        assert client.svc is not None
        client.svc.accounting.request_done("?", "overloaded", 0.0, peer=client.peer, status=503)
        client.close()

    def left(self, client: ClientConnection) -> None:
        """A client connection ended; a waiting one may take its slot."""
        if client not in self._clients:
            self.waiting = deque((c, t) for c, t in self.waiting if c is not client)
            return
        self._release(client)
        self._admit_waiting()

    def _release(self, client: ClientConnection) -> None:
        self._clients.discard(client)
        if self.metrics is not None:
            self.metrics.connection_closed()  # type: ignore[attr-defined]

    def _admit_waiting(self) -> None:
        closing = self.svc is not None and self.svc.closing
        while self.waiting and not closing and len(self._clients) < self.gw.max_connections:
            waiting, timer = self.waiting.popleft()
            timer.cancel()
            if waiting.state is not ClientState.CLOSED:
                self._open(waiting)


def _address_key(client: ClientConnection) -> str:
    """A client's address for per-address limits: the IPv4 address, or the /64 of an IPv6 one (kept on
    the client once worked out)."""
    key = client.address_key
    if key is not None:
        return key
    peer = client.peer
    host = peer.rpartition(":")[0] or peer
    key = host
    if ":" in host:
        try:
            key = str(ipaddress.IPv6Network((host.partition("%")[0], 64), strict=False))
        except ValueError:
            pass
    client.address_key = key
    return key


def _descriptor(client: ClientConnection) -> int:
    """The client's descriptor number.  The kernel hands out the lowest free one, so a number at or
    above the reserve's ceiling means every one below it is taken."""
    sock = client.transport.get_extra_info("socket") if client.transport is not None else None
    try:
        return sock.fileno() if sock is not None else -1
    except (OSError, ValueError):
        return -1
