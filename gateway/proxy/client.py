"""Step 2 of a request, read the head: one state machine per client connection, on protocol callbacks.

``ClientConnection`` is the whole life of a client connection (uvicorn's ``HttpToolsProtocol`` shape):
the first byte is sniffed (a TLS ClientHello or a SOCKS greeting on the HTTP port is answered at
once), heads are read under ``head_timeout`` from their first byte and parsed, each request is
admitted (``gateway.proxy.admission``) and handed to an ``Exchange`` or a ``Connect``
(``gateway.proxy.exchange``), its body streamed from here to the upstream as it arrives (reading
paused while the upstream's buffer is full), and a pipelined next request waits with reading paused
until the answer is complete.  A CONNECT ends in ``gateway.proxy.relay.Tunnel``, which takes the
transport over (``transport.set_protocol``).  On the interception port (``gateway.proxy.intercept``) a
CONNECT is answered at once instead (state ``HELLO``): its ClientHello is read, the TLS handshake run under
``head_timeout``, and the TLS transport comes back here, whose requests are then served like plain HTTP
ones towards the session's site.  ``connection_lost`` aborts whatever the connection holds upstream, so no
slot, task or upstream connection outlives its client.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
import time
from collections.abc import Sized

from config.printable import printable
from gateway.proxy import fasthead, http1
from gateway.proxy.bound import BoundConnections
from gateway.proxy.connection import UpstreamConnection
from gateway.proxy.errors import BadRequest, BadResponse
from gateway.proxy.exchange import Connect, Exchange
from gateway.proxy.fixed import FixedTarget, could_be_head, fixed_head
from gateway.proxy.intercept import Interceptor, Site, intercepted_head, terminate
from gateway.proxy.refusals import Admission, NeedsVerification, Refusal
from gateway.proxy.relay import Tunnel, TunnelState
from gateway.proxy.routing import Credentials, parse_proxy_authorization
from gateway.proxy.services import HELD_MAX, Services
from gateway.proxy.socksproto import SocksProtocol
from gateway.proxy.tlshello import BadHello, NotHello, read_hello

__all__ = ["ClientConnection", "ClientState"]

_REQUEST_LINE = re.compile(rb"[^ ]+ [^ ]+ HTTP/[0-9]\.[0-9]\r\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_TLS_HANDSHAKE = 0x16
_SNIFFED = (_TLS_HANDSHAKE, 4, 5)  # first bytes that are not HTTP: TLS, SOCKS4, SOCKS5


class ClientState(enum.Enum):
    WAITING = "waiting"  # for a slot (max_connections reached)
    IDLE = "idle"  # between requests
    BUSY = "busy"  # a request is being served
    TUNNEL = "tunnel"  # handed to the relay
    SOCKS = "socks"  # handed to the SOCKS handshake (gateway.proxy.socksproto)
    HELLO = "hello"  # interception port: CONNECT answered, its ClientHello read and TLS handshake under way
    CLOSED = "closed"


# module-level names for the hot path: a global is read faster than an enum member through its class
_WAITING, _IDLE, _BUSY, _TUNNEL, _SOCKS, _CLOSED = (
    ClientState.WAITING, ClientState.IDLE, ClientState.BUSY, ClientState.TUNNEL, ClientState.SOCKS, ClientState.CLOSED
)
_HELLO = ClientState.HELLO
_INTERCEPTED = "intercepted"  # the protocol label of a request inside an intercepted TLS session


class ClientConnection(asyncio.Protocol):
    """A client connection, from accept to close (see the module docstring).  A SOCKS client's comes
    back here once its CONNECT is through, in fixed-target mode (``serve_fixed``, ``gateway.proxy.fixed``)."""

    pools_tunnels = False  # an HTTP client's CONNECT is always a fresh tunnel
    address_key: str | None = None  # its address for per-address limits, once the server needed it

    def __init__(
        self, svc: Services, slots: Slots, socks_only: bool = False, interceptor: Interceptor | None = None
    ) -> None:
        self.svc = svc
        self.slots = slots
        self.socks_only = socks_only  # accepted on gateway.socks_listen
        self.interceptor = interceptor  # accepted on gateway.intercept_listen (gateway.proxy.intercept)
        self.site: Site | None = None  # an intercepted TLS session's site, once its handshake is through
        self._hello_of: tuple[http1.RequestHead, Admission, Site] | None = None  # the CONNECT being intercepted
        self._after_200 = False  # the client has its CONNECT answer already (a raw relay after interception)
        self._user: str | None = None  # an intercepted session's verified user and credentials, for each request
        self._credentials: Credentials | None = None
        self._loop = svc.loop
        self.state = _WAITING
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.request: Exchange | Connect | None = None
        self.peer = "?"
        self.socks: SocksProtocol | None = None  # the SOCKS protocol it was handed to, if it was
        self.first = True
        self.idle_since = 0.0
        self.done: asyncio.Future[None] | None = None
        self.tunnel_of: Tunnel | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._body: http1.BodyTracker | None = None  # the request body still to come from the client
        self._body_flowing = False  # the upstream takes body bytes now
        self._upload: Exchange | None = None  # whose body it is
        self._after_body: bool | None = None  # answered early: whether to keep the connection once the body is in
        self._paused_reading = False
        self._paused_upstream = False
        self.fixed: FixedTarget | None = None  # a SOCKS session served here (serve_fixed)
        self._eof = False  # a SOCKS session's client half-closed during its request
        self.bound: BoundConnections | None = None  # held per user of this client (NTLM, Negotiate: gateway.proxy.bound)

    def __repr__(self) -> str:
        return f"<ClientConnection {self.peer} {self.state.name}>"

    @property
    def idle(self) -> bool:
        """A keep-alive client between requests, nothing read: may be closed to make room
        (``max_connections``).  One that never sent a request is not: ``head_timeout`` is its limit."""
        return self.state is _IDLE and not self.buffer and not self.first

    @property
    def handshaking(self) -> bool:
        """Still in its handshake, nothing admitted yet: half a first head, or a SOCKS greeting,
        password or request not complete.  Evictable like an idle client when ``max_connections`` is
        reached, and limited per address then (``gateway.proxy.server``)."""
        state = self.state
        if state is _IDLE:
            return self.first and self.fixed is None
        if state is _HELLO:  # an intercepted CONNECT whose ClientHello or TLS handshake is not through yet
            return True
        return state is _SOCKS and self.socks is not None and not self.socks.finished

    # connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.state is _HELLO:  # the TLS transport of an intercepted session, its handshake through
            self._intercepted(transport)  # type: ignore[arg-type]
            return
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.done = self._loop.create_future()
        self.slots.arrived(self)

    def start(self) -> None:
        """Called once the server has a connection slot for us."""
        self.state = _IDLE
        self.idle_since = self._loop.time()
        self._arm(self.svc.gw.head_timeout)
        if self.buffer:
            if self.buffer[0] in _SNIFFED or self.socks_only:
                data = bytes(self.buffer)
                self.buffer.clear()
                self._sniffed(data)
                return
            self._try_head()

    def _arm(self, seconds: float) -> None:
        # one handle per connection: moved later by a re-check when it fires, moved sooner by a new one
        self._deadline = deadline = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
        elif deadline < self._timer_at:
            self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        state = self.state
        if state is _CLOSED or state is _TUNNEL:
            return
        if state is _BUSY and self._body is None:
            return  # the upstream connection's timers watch the answer
        if state is _HELLO and self._loop.time() >= self._deadline:  # no ClientHello, or no handshake, in time
            self._hello_failed("timeout")
            return
        if self._loop.time() < self._deadline:  # re-armed since: sleep again (one handle, not one per request)
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline
            return
        if state is _BUSY:  # the client stalled in the middle of its body
            self._abort("client_timeout")
            self.close()
            return
        if self.fixed is not None:  # a SOCKS session: a slow start is raw bytes, an idle one ends
            if self.buffer:
                self._raw(bytes(self.buffer))
                return
            self.close()
            return
        if self.first or self.buffer:
            method, target = _read_so_far(self.buffer)
            self.write(http1.simple_response(408, "request head not received in time", close=True))
            self._count(method, Refusal(408, "", "timeout").outcome, status=408, target=target)
        self.close()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is _IDLE and not self.buffer:
            if self.first and (data[0] in _SNIFFED or self.socks_only):
                self._sniffed(data)
                return
            # the common case: exactly one whole head in this read, nothing before it
            end = data.find(b"\r\n\r\n")
            if end > 0 and end + 4 == len(data) <= self.svc.gw.max_header_bytes:
                self._request(data)
                return
        self.buffer += data
        if state is _BUSY:
            if self._body is not None:
                self._deadline = self._loop.time() + self.svc.gw.read_timeout
                if self._body_flowing:
                    self._pump_body()
                    return
            if len(self.buffer) > HELD_MAX:
                self._pause()  # a pipelining client waits for its previous answer
            return
        if state is _WAITING:
            if len(self.buffer) > HELD_MAX:
                self._pause()
            return
        if state is _HELLO:
            self._read_hello()
            return
        if not self.first and len(self.buffer) == len(data):
            # the first bytes of a later head: from now on it has head_timeout, not idle_timeout (slowloris)
            self._arm(self.svc.gw.head_timeout)
        self._try_head()

    def _sniffed(self, data: bytes) -> None:
        """Not HTTP: a TLS ClientHello is answered at once; a SOCKS greeting (0x05, 0x04), and anything
        on ``gateway.socks_listen``, goes to the SOCKS protocol, which takes the transport over."""
        if data[0] == _TLS_HANDSHAKE and not self.socks_only:
            self._bad(BadRequest(400, "TLS sent to the HTTP proxy port: use http:// for the proxy address"), b"")
            return
        assert self.transport is not None
        self.first = False
        self.state = _SOCKS
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.socks = socks = SocksProtocol(self.svc, self)
        self.transport.set_protocol(socks)
        socks.data_received(data)  # anything but SOCKS is refused there and closed

    def serve_fixed(self, fixed: FixedTarget, early: bytes) -> None:
        """A SOCKS client's CONNECT is through (its reply sent): its bytes are read here from now on,
        served as HTTP requests to that one target while they are, else relayed raw."""
        assert self.transport is not None
        self.fixed = fixed
        fixed.client = self
        self.state = ClientState.IDLE
        self.idle_since = self._loop.time()
        self.transport.set_protocol(self)
        gw = self.svc.gw
        self._arm(min(gw.read_timeout, gw.idle_timeout))  # what a raw tunnel would give a silent client
        conn = fixed.conn
        if conn is not None and conn.early:  # the target spoke first (its banner came with the CONNECT answer)
            self._raw(early, conn.early)
            return
        if early:
            self.data_received(early)

    def upstream_spoke(self, conn: UpstreamConnection, data: bytes) -> None:
        """The target spoke before any request (SMTP, SSH, ...): a raw relay from here, never pooled."""
        if self.state is ClientState.IDLE:
            self._raw(bytes(self.buffer), data)
        else:
            conn.close()  # a request is on its way on another connection: this one spoke unasked

    def upstream_gone(self, conn: UpstreamConnection) -> None:
        """The held connection closed between requests: the client sees the target close, as through a
        raw tunnel, except on a pooled one that had carried nothing of this session (the next request dials)."""
        fixed = self.fixed
        if fixed is None or self.state is not ClientState.IDLE:
            return
        if conn.uses and not fixed.served and not self.buffer:
            fixed.conn = None
            return
        self.close()

    def _raw(self, client_bytes: bytes, upstream_bytes: bytes = b"") -> None:
        """A SOCKS session's bytes from here on are relayed raw on its held connection (never pooled again)."""
        fixed = self.fixed
        assert fixed is not None and self.transport is not None
        self.buffer.clear()
        conn = fixed.detach()
        if conn is None or conn.transport is None:  # nothing to relay on (it closed): as the target closing
            self.close()
            return
        self.state = ClientState.TUNNEL
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

        def closed(tunnel: Tunnel) -> None:
            fixed.sent += tunnel.sent
            fixed.received += tunnel.received
            self._lost()

        gw = self.svc.gw
        self.tunnel_of = tunnel = Tunnel(
            self.transport, conn.transport, idle_timeout=min(gw.read_timeout, gw.idle_timeout),
            on_bytes=self.svc.accounting.on_bytes, on_closed=closed,
        )
        self._paused_reading = False
        tunnel.start(client_bytes=client_bytes, upstream_bytes=upstream_bytes)
        if self._eof and tunnel.state is not TunnelState.CLOSED:
            tunnel.client_eof()

    def eof_received(self) -> bool | None:
        if self.fixed is None:
            return None  # close (an HTTP client that half-closes is done)
        if self.state is ClientState.IDLE and self.buffer:
            self._eof = True
            self._raw(bytes(self.buffer))  # what it sent so far, and its EOF, to the target
            return True
        if self.state is ClientState.BUSY and self._body is None:
            self._eof = True  # its answer still comes, then the connection closes
            return True
        return None

    def socks_done(self) -> None:
        """A SOCKS client's connection ended (its handshake failed, its dial, or its tunnel)."""
        self._lost()

    def _try_head(self) -> None:
        buffer = self.buffer
        if self.fixed is not None:
            if not could_be_head(buffer):
                self._raw(bytes(buffer))
                return
        else:
            while buffer[:2] == b"\r\n":  # RFC 9112 2.2: ignore CRLF before a request line
                del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        limit = self.svc.gw.max_header_bytes
        if end < 0 or end + 4 > limit:
            if self.fixed is not None:
                if len(buffer) > limit or end + 4 > limit:
                    self._raw(bytes(buffer))
                return
            if len(buffer) > limit or end + 4 > limit:
                self._bad(BadRequest(431, f"request head larger than {limit} bytes"))
            elif buffer:
                self._early_error(buffer)
            return
        raw = bytes(buffer[: end + 4])
        del buffer[: end + 4]
        self._request(raw)

    def _early_error(self, buffer: bytearray) -> None:
        """A head that can never become valid is refused now: bare LF line ends, HTTP/0.9."""
        if _BARE_LF.search(buffer) is not None:
            self._bad(BadRequest(400, "bare LF in the request head (lines must end with CRLF)"))
            return
        line_end = buffer.find(b"\r\n")
        if line_end >= 0 and _REQUEST_LINE.match(buffer, 0, line_end + 2) is None:
            try:
                http1.parse_request_head(bytes(buffer[: line_end + 2]) + b"\r\n")
            except BadRequest as exc:
                self._bad(exc)
                return
            self._bad(BadRequest(400, "malformed request line"))

    def _request(self, raw: bytes) -> None:
        fixed = self.fixed
        if fixed is not None:
            fixed_request = fixed_head(raw)
            if fixed_request is None:
                self._raw(raw + bytes(self.buffer))
                return
            self.state = ClientState.BUSY
            self._begin(fixed_request, fixed.admission)
            return
        site = self.site
        try:
            if site is None:
                head = fasthead.plain_request(raw) or http1.parse_request_head(raw)
            else:
                head = intercepted_head(raw, site)
        except BadRequest as exc:
            self._bad(exc, raw)
            return
        self.first = False
        self.state = _BUSY
        try:
            admission = self.svc.admitter.admit(head, self._user, self._credentials, conn=self)
        except Refusal as refusal:
            self._refuse(head, refusal, time.perf_counter())
            return
        except NeedsVerification:  # a password not verified yet: the slow check runs in a thread
            self.svc.spawn(self._verify(head), "client-verify")
            return
        self._begin(head, admission)

    async def _verify(self, head: http1.RequestHead) -> None:
        started = time.perf_counter()
        try:
            admission = await self.svc.admitter.admit_slow(head, self.peer, self._user, self._credentials, conn=self)
        except Refusal as refusal:
            if self.state is _BUSY:
                self._refuse(head, refusal, started)
            return
        if self.state is _BUSY:
            self._begin(head, admission)
        else:  # the client left meanwhile
            self.svc.admitter.undo(admission, self)

    def _begin(self, head: http1.RequestHead, admission: Admission) -> None:
        svc = self.svc
        if head.is_connect:
            interceptor = self.interceptor
            if interceptor is not None and self.site is None and not interceptor.bypassed(head.host):
                self.intercept(head, admission)
                return
            self.request = request = Connect(svc, self, head, admission)
        elif head.upgrade is not None and self.site is not None:  # WebSocket inside: relayed raw on its upstream
            self.request = request = Connect(svc, self, head, admission)
        else:
            self.request = request = Exchange(svc, self, head, admission, self.fixed)
            if request.body:
                framing = http1.request_body_framing(head)
                self._body = http1.BodyTracker(framing.kind, framing.length)
                self._upload = request
                self._after_body = None
                self._body_flowing = False
                self._deadline = self._loop.time() + svc.gw.read_timeout
                self._arm(svc.gw.read_timeout)
        request.start()

    def _bad(self, exc: BadRequest, raw: bytes | bytearray | None = None) -> None:
        method, target = _read_so_far(self.buffer if raw is None else raw)
        self.state = _BUSY
        self.write(http1.simple_response(exc.status, exc.message, close=True))
        outcome = "headers_too_large" if exc.status == 431 else "bad_request"
        self._count(method, outcome, status=exc.status, target=target)
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.state is not _CLOSED:
            self.transport.write(data)

    # the request body: client -> upstream --------------------------------------------------------
    def body_wanted(self) -> None:
        """The upstream takes body bytes (again): send what is held and read on."""
        self._body_flowing = True
        self._pump_body()

    def _pump_body(self) -> None:
        body = self._body
        request = self._upload
        if body is None or request is None:
            return
        buffer = self.buffer
        if buffer:
            data = bytes(buffer)
            try:
                used, done = body.feed(data)
            except BadResponse as exc:  # a broken chunked body: nothing more goes upstream
                self._abort("bad_request")
                if not request.responded and self.fixed is None:
                    self.write(http1.simple_response(400, exc.message, close=True))
                self.close()
                return
            del buffer[:used]
            if used:
                room = request.body_data(data if used == len(data) else data[:used])
            else:
                room = True
            if done:
                self._body = None
                self._upload = None
                self._body_flowing = False
                request.body_end()
                if self._after_body is not None:  # the answer came first: now the next request
                    keep, self._after_body = self._after_body, None
                    self._next(keep)
                elif buffer:
                    self._pause()  # a pipelined request waits for this answer
                return
            if not room:
                self._body_flowing = False
                self._pause()
                return
        self._resume()

    def _pause(self) -> None:
        if not self._paused_reading and self.transport is not None and self.state is not _CLOSED:
            self.transport.pause_reading()
            self._paused_reading = True

    def _resume(self) -> None:
        if self._paused_reading and self.transport is not None and self.state is not _CLOSED:
            self.transport.resume_reading()
            self._paused_reading = False

    # the end of a request --------------------------------------------------------------------------
    def refused(self, request: Exchange | Connect, refusal: Refusal) -> None:
        self.request = None
        if self._after_200:  # a raw relay after interception: the client has its 200, nothing else of ours
            self._count(request.head.method, refusal.outcome, request.started, request.head, request, refusal.status)
            self.close()
            return
        self._refuse(request.head, refusal, request.started, request)

    def _refuse(self, head: http1.RequestHead, refusal: Refusal, started: float, request: Exchange | Connect | None = None) -> None:
        if self.fixed is not None:  # no answer of ours inside a SOCKS tunnel: the target "closed"
            self._count(head.method, refusal.outcome, started, head, request, refusal.status)
            self._body = None
            self.close()
            return
        keep = refusal.keeps(head)
        self.write(http1.simple_response(refusal.status, refusal.message, headers=refusal.headers, close=not keep))
        self._count(head.method, refusal.outcome, started, head, request, refusal.status)
        self._body = None
        self._next(keep)

    def answered(self, request: Exchange | Connect, outcome: str, keep: bool) -> None:
        self.request = None
        self._count(request.head.method, outcome, request.started, request.head, request, request.status)
        if self._body is not None:
            if keep and outcome == "ok":  # answered before the whole body came: it still goes upstream
                self._after_body = True
                return
            self._body = None
            self._upload = None
            keep = False
        self._next(keep)

    def _count(
        self,
        method: str,
        outcome: str,
        started: float | None = None,
        head: http1.RequestHead | None = None,
        request: Exchange | Connect | None = None,
        status: int = 0,
        target: str = "-",
    ) -> None:
        """Counted, and logged when the access log is on: ``target`` is what was read of a request
        that never became a head (its status says why)."""
        fixed = self.fixed
        if fixed is not None:  # a request inside a SOCKS session: the session is counted, once, at its end
            if request is not None:
                fixed.sent += request.sent
                fixed.received += request.received
            return
        seconds = time.perf_counter() - started if started is not None else 0.0
        accounting = self.svc.accounting
        if request is not None and request.admission.usage is not None:
            request.admission.done(request.sent, request.received)  # the user's usage (no metric label)
        site = self.site
        if not accounting.access:  # the common case: a counter, no log line to fill in
            if site is None:
                accounting.count(method, outcome, seconds)
            else:
                accounting.count(method, outcome, seconds, _INTERCEPTED)
            return
        if head is None:
            host = target
        elif site is None:
            host = http1.format_authority(head.host, head.port)
        else:
            host = f"https://{site.authority}{head.path}"
        accounting.request_done(
            method,
            outcome,
            seconds,
            peer=self.peer,
            user=request.admission.user if request is not None else None,
            host=host,
            status=status,
            upstream=request.proxy if request is not None else None,
            sent=request.sent if request is not None else 0,
            received=request.received if request is not None else 0,
            protocol=None if site is None else _INTERCEPTED,
        )

    def _next(self, keep: bool) -> None:
        if not keep or self.svc.closing or (self._eof and not self.buffer):
            self.close()
            return
        self.state = _IDLE
        self.idle_since = self._loop.time()
        self._arm(self.svc.gw.idle_timeout)
        if self._paused_reading:
            self._resume()
        if self.buffer:
            self._try_head()
        elif self.slots.waiting:
            self.slots.idle(self)

    def tunnel(self, request: Connect, conn: UpstreamConnection, established: bytes) -> None:
        """The CONNECT is through: the relay takes both transports over."""
        self.request = None
        assert self.transport is not None and conn.transport is not None
        self.state = _TUNNEL
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        early = b""
        if self.site is not None:  # an Upgrade inside an intercepted session: its head goes first, as sent
            head = request.head
            upgrade = [("Connection", "Upgrade"), ("Upgrade", head.upgrade or "")]
            early = http1.forward_request_head(head, absolute=False, extra=upgrade, authority=self.site.authority)
        elif not self._after_200:
            self.write(established)
        started = request.started

        def closed(tunnel: Tunnel) -> None:
            request.sent, request.received = tunnel.sent, tunnel.received
            self._count(request.head.method, "ok", started, request.head, request, 200)
            self._lost()

        self.tunnel_of = Tunnel(
            self.transport, conn.transport, idle_timeout=min(self.svc.gw.read_timeout, self.svc.gw.idle_timeout), on_bytes=self.svc.accounting.on_bytes,
            on_closed=closed,
        )
        early += self.buffer
        self.buffer.clear()
        self._paused_reading = False
        self.tunnel_of.start(client_bytes=early, upstream_bytes=conn.early)

    # interception (gateway.intercept_listen, gateway.proxy.intercept) -----------------------------
    def intercept(
        self, head: http1.RequestHead, admission: Admission, credentials: Credentials | None = None, answer: bytes = b""
    ) -> None:
        """A CONNECT (or, through ``intercept_socks``, a SOCKS one) on the interception port: answered at
        once, no upstream yet; what the client sends next decides (``_read_hello``)."""
        assert self.interceptor is not None
        self.state = _HELLO
        if credentials is None and head.proxy_authorization is not None:
            credentials = parse_proxy_authorization(head.proxy_authorization)
        self._credentials = credentials
        self._user = admission.user
        self._hello_of = (head, admission, self.interceptor.site(head.host, head.port, None))
        self.write(answer or http1.CONNECT_ESTABLISHED)
        self._arm(self.svc.gw.head_timeout)  # the ClientHello and the handshake, like a head
        if self.buffer:
            self._read_hello()

    def intercept_socks(
        self, head: http1.RequestHead, admission: Admission, credentials: Credentials | None, answer: bytes, early: bytes
    ) -> None:
        """A SOCKS client's CONNECT on the interception port: its connection comes back here."""
        assert self.transport is not None
        self.first = False
        self.transport.set_protocol(self)
        self.buffer += early
        self.intercept(head, admission, credentials, answer)

    def _read_hello(self) -> None:
        hello_of = self._hello_of
        interceptor = self.interceptor
        assert hello_of is not None and interceptor is not None and self.transport is not None
        try:
            hello = read_hello(self.buffer)
        except NotHello:  # not TLS: relayed raw through a picked upstream, as the main port would
            self._hello_of = None
            self._after_200 = True
            self.state = _BUSY
            head, admission, _ = hello_of
            self.request = request = Connect(self.svc, self, head, admission)
            request.start()
            return
        except BadHello:
            self._hello_failed("bad_request")
            return
        if hello is None:
            return  # more to come, within head_timeout
        head, admission, _ = hello_of
        site = interceptor.site(head.host, head.port, hello.sni)
        self._hello_of = (head, admission, site)
        self.transport.pause_reading()  # nothing more comes before our ServerHello anyway
        name = interceptor.leaf_name(head.host, hello.sni)
        context = interceptor.leaves.cached(name)
        if context is None:
            self.svc.spawn(self._mint(name), "intercept-mint")
        else:
            self._terminate(context)

    async def _mint(self, name: str) -> None:
        assert self.interceptor is not None
        try:
            context = await self.interceptor.leaves.context(name)
        except (ValueError, TypeError, ssl.SSLError):  # a name no certificate can carry
            self._hello_failed("bad_request")
            return
        if self.state is _HELLO and self.transport is not None and not self.transport.is_closing():
            self._terminate(context)

    def _terminate(self, context: ssl.SSLContext) -> None:
        assert self.transport is not None
        hello = bytes(self.buffer)
        self.buffer.clear()
        remaining = max(0.001, self._deadline - self._loop.time())
        terminate(self._loop, self.transport, self, context, hello, remaining, self._handshake_failed)

    def _handshake_failed(self, exc: BaseException) -> None:
        if isinstance(exc, TimeoutError):  # the TLS layer's own handshake timer (head_timeout's rest)
            self._hello_failed("timeout")
        else:
            self._hello_failed("bad_request" if isinstance(exc, ssl.SSLError) else "client_closed")

    def _hello_failed(self, outcome: str, lost: bool = False) -> None:
        """No ClientHello, a bad one, or a handshake that failed or timed out: closed, counted once.
        ``lost``: the connection is gone already (``connection_lost``)."""
        if self.state is not _HELLO:
            return
        hello_of, self._hello_of = self._hello_of, None
        self.state = _CLOSED
        accounting = self.svc.accounting
        if accounting.access and hello_of is not None:  # a client that does not trust the CA shows up here
            head, admission, site = hello_of
            accounting.request_done(
                "CONNECT", outcome, 0.0, peer=self.peer, user=admission.user,
                host=http1.format_authority(site.name, head.port), protocol=_INTERCEPTED,
            )  # fmt: skip
        else:
            accounting.count("CONNECT", outcome, 0.0, _INTERCEPTED)
        transport = self.transport
        if lost or transport is None:
            self._lost()
            return
        ours = transport.get_protocol() is self  # else the TLS layer has it: its connection_lost never reaches us
        transport.close()
        if not ours:
            self._lost()

    def _intercepted(self, transport: asyncio.Transport) -> None:
        """The handshake is through: the TLS transport is the client's from now on, and what it sends is
        served request by request like plain HTTP (each request picks, and pays, for itself)."""
        hello_of, self._hello_of = self._hello_of, None
        assert hello_of is not None
        _, admission, site = hello_of
        self.transport = transport
        self.site = site
        self.svc.admitter.refund(admission)  # the CONNECT went nowhere: the requests inside are charged
        self.state = _IDLE
        self.idle_since = self._loop.time()
        self._arm(self.svc.gw.idle_timeout)

    def close(self) -> None:
        if self.state is _HELLO:  # its transport may be the TLS layer's already: ended, and counted, there
            self._hello_failed("client_closed")
            return
        if self.state is _TUNNEL and self.tunnel_of is not None:
            self.tunnel_of.close()
            return
        if self.state is not _CLOSED and self.transport is not None:
            self.transport.close()
        if self.state is not _TUNNEL:
            self.state = _CLOSED

    def _abort(self, outcome: str) -> None:
        """Close whatever this connection holds upstream: the request in progress, a body still going out."""
        request, self.request = self.request, None
        upload, self._upload = self._upload, None
        self._body = None
        if request is not None:
            if not request.finished:
                self._count(request.head.method, outcome, request.started, request.head, request, request.status)
            request.abort()
        if upload is not None and upload is not request:
            upload.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is _TUNNEL:
            return  # the tunnel's own protocol hears of it
        if self.state is _HELLO:
            self._hello_failed("client_closed", lost=True)
            return
        self._abort("client_closed")
        self._lost()

    def _lost(self) -> None:
        self.state = _CLOSED
        self.svc.admitter.release(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fixed, self.fixed = self.fixed, None
        if fixed is not None:
            fixed.end()
        bound, self.bound = self.bound, None
        if bound is not None:
            bound.end()
        self.slots.left(self)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # flow control: a slow client pauses the upstream that feeds it -----------------------------
    def pause_writing(self) -> None:
        conn = self.request.conn if self.request is not None else None
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()
            self._paused_upstream = True

    def resume_writing(self) -> None:
        conn = self.request.conn if self.request is not None else None
        if self._paused_upstream and conn is not None and conn.transport is not None:
            conn.transport.resume_reading()
        self._paused_upstream = False


def _read_so_far(buffer: bytes | bytearray) -> tuple[str, str]:
    """The method and target of a request that never became a head, as far as they were read (for the
    access log: at most 200 bytes of the target, control characters escaped by ``config.printable``)."""
    line = bytes(buffer[:512]).split(b"\n", 1)[0].rstrip(b"\r")
    method, _, rest = line.partition(b" ")
    target = rest.split(b" ", 1)[0][:200]
    return _text(method[:16]) or "?", _text(target) or "-"


def _text(raw: bytes) -> str:
    return printable(raw.decode("utf-8", "surrogateescape"))


class Slots:
    """Where a client connection reports arriving, idling and leaving (``gateway.proxy.server``).
    ``waiting``: the connections waiting for a slot (while there are none, going idle frees nothing)."""

    waiting: Sized = ()

    def arrived(self, client: ClientConnection) -> None: ...
    def idle(self, client: ClientConnection) -> None: ...
    def left(self, client: ClientConnection) -> None: ...

