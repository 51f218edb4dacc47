"""A SOCKS client connection (SOCKS5, SOCKS4/4a): its handshake on callbacks, then the one CONNECT.

The accept step (``gateway.proxy.client.ClientConnection``) sniffs the first byte (0x05 or 0x04, or
anything on ``gateway.socks_listen``) and hands the transport over with ``set_protocol``.  This protocol
drives ``gateway.proxy.socks.SocksHandshake``: it chooses the method, checks RFC 1929 credentials (a
wrong password gets the failure status and a close), and turns the CONNECT request into the CONNECT
head an HTTP client would have sent.  That head goes through the one admission
(``gateway.proxy.admission.Admitter``: target, loops, ports, auth, credits) and the one CONNECT
(``gateway.proxy.exchange.Connect``: pick, failover before any reply, dialing, refunds) with this
protocol as its client side; once through, the client connection serves the session
(``gateway.proxy.fixed``: HTTP requests over a pooled connection to the target, else the one relay,
``gateway.proxy.relay.Tunnel``); accounting is the same, with the ``protocol`` label.  The only
differences are the answers (``SocksAnswer``).

The whole handshake has ``gateway.head_timeout``: a slowloris, garbage or a truncated request gets
its reply code or a close within it, and the connection's slot is released at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.proxy import http1
from gateway.proxy.exchange import Connect
from gateway.proxy.fixed import FixedTarget
from gateway.proxy.refusals import Admission, NeedsLease, NeedsVerification, Refusal
from gateway.proxy.routing import Credentials, user_name
from gateway.proxy.services import HELD_MAX
from gateway.proxy.socks import (
    GRANTED4,
    SUCCEEDED5,
    Greeting,
    Method,
    Reply,
    Request,
    SocksError,
    SocksHandshake,
    State,
    UserPass,
    reply4,
    reply5,
)
from gateway.proxy.upstream import UpstreamError, UpstreamRefused, UpstreamTimeout

if TYPE_CHECKING:
    from gateway.proxy.connection import UpstreamConnection
    from gateway.proxy.intercept import Interceptor
    from gateway.proxy.exchange import Exchange
    from gateway.proxy.services import Services
    from pool.models import Proxy

__all__ = ["SocksAnswer", "SocksProtocol", "socks5_code"]

# our HTTP answers as SOCKS5 reply codes (RFC 1928 section 6); 502 and 504 look at the last failure
_BY_STATUS = {
    400: Reply.NOT_ALLOWED,  # a bad routing parameter in the username
    402: Reply.NOT_ALLOWED,  # credits exhausted
    429: Reply.NOT_ALLOWED,  # a per-user limit
    403: Reply.NOT_ALLOWED,  # port, loop, or a forbidden direct target
    407: Reply.NOT_ALLOWED,
    503: Reply.NETWORK_UNREACHABLE,  # no active proxy matches
    504: Reply.TTL_EXPIRED,
}


def socks5_code(refusal: Refusal) -> int:
    """The reply code for one of our refusals.  For a 502, the last upstream's failure decides: a target
    its upstream could not reach or that refused keeps the upstream's SOCKS code (or 0x04 / 0x05 for an
    HTTP upstream's CONNECT 502-504), an upstream that timed out is 0x06, anything else a general failure."""
    code = _BY_STATUS.get(refusal.status)
    if code is not None:
        return code
    cause = refusal.cause
    if isinstance(cause, UpstreamTimeout):
        return Reply.TTL_EXPIRED
    if isinstance(cause, UpstreamRefused) and not cause.blames_upstream:
        if cause.reason == "socks_error" and cause.status_code in UpstreamRefused.TARGET_SOCKS:
            return int(cause.status_code)  # type: ignore[arg-type]
        return Reply.HOST_UNREACHABLE
    if isinstance(cause, UpstreamError) and cause.reason == "dns":
        return Reply.HOST_UNREACHABLE
    return Reply.GENERAL_FAILURE


@dataclass(frozen=True, slots=True)
class SocksAnswer:
    """How the CONNECT machinery answers a SOCKS client: success once the tunnel is up, else a reply code."""

    version: int

    @property
    def protocol(self) -> str:
        return "socks5" if self.version == 5 else "socks4"

    def established(self, proxy: Proxy | None) -> bytes:
        return SUCCEEDED5 if self.version == 5 else GRANTED4

    def refused(self, refusal: Refusal) -> bytes:
        return reply5(socks5_code(refusal)) if self.version == 5 else reply4(False)


class Slot(Protocol):
    """What a SOCKS connection needs from its place in the server (``gateway.proxy.client.ClientConnection``)."""

    peer: str
    transport: asyncio.Transport | None

    interceptor: Interceptor | None

    def serve_fixed(self, fixed: FixedTarget, early: bytes) -> None: ...
    def socks_done(self) -> None: ...
    def intercept_socks(
        self, head: http1.RequestHead, admission: Admission, credentials: Credentials | None, answer: bytes, early: bytes
    ) -> None: ...


class SocksProtocol(asyncio.Protocol):
    """One SOCKS client, from its first byte to its tunnel.  ``slot`` stays the connection's place in
    the server (its ``ClientConnection``); this is the client side of its ``Connect``."""

    pools_tunnels = True  # the CONNECT may ride an idle pooled connection (gateway.proxy.fixed)
    bound = None  # its requests are served in fixed-target mode, which holds its one connection anyway
    site = None  # never inside an intercepted session (the interception port takes a SOCKS CONNECT back)

    def __init__(self, svc: Services, slot: Slot) -> None:
        self.svc = svc
        self.slot = slot
        self.transport = slot.transport
        self.peer = slot.peer
        self.hs = SocksHandshake()
        self.credentials: Credentials | None = None
        self.user: str | None = None  # verified by RFC 1929 (auth = "users")
        self.finished = False  # the handshake is over (failed, or its CONNECT admitted)
        self.request: Connect | None = None  # the admitted CONNECT, while its upstream is dialed
        self.early = bytearray()  # bytes the client sent after its request, for the tunnel
        self._released = False
        self._timer: asyncio.TimerHandle | None = svc.loop.call_later(svc.gw.head_timeout, self._timed_out)

    def __repr__(self) -> str:
        return f"<SocksProtocol {self.peer} {self.hs!r}>"

    @property
    def protocol(self) -> str:
        return "socks4" if self.hs.version == 4 else "socks5"

    # protocol ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.finished:
            if self.request is not None:
                self.early += data  # early tunnel data (e.g. a TLS ClientHello sent before our reply)
                if len(self.early) > HELD_MAX and self.transport is not None:
                    self.transport.pause_reading()  # the tunnel resumes it (as for an HTTP CONNECT)
            return
        try:
            message = self.hs.feed(data)
            while message is not None and not self.finished:
                self._on(message)
                if self.finished or self.hs.state not in (State.AUTH, State.REQUEST) or not self.hs.buffer:
                    break
                message = self.hs.feed(b"")
        except SocksError as exc:
            self._fail(exc.reply, "?", "bad_request")

    def eof_received(self) -> bool:
        self._close()  # a half-closed handshake or dial will never become a tunnel
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished = True
        self._cancel_timer()
        request, self.request = self.request, None
        if request is not None and not request.finished:  # the client left while its upstream was dialed
            request.abort()
            self._count(request, "client_closed")
        self._release()

    # messages ----------------------------------------------------------------------------------
    def _on(self, message: Greeting | UserPass | Request) -> None:
        if isinstance(message, Greeting):
            self._greeting(message)
        elif isinstance(message, UserPass):
            self._userpass(message)
        else:
            self._request(message)

    def _greeting(self, greeting: Greeting) -> None:
        # username/password whenever offered: with auth = "none" the username may carry routing parameters
        if Method.USERPASS in greeting.methods:
            method = Method.USERPASS
        elif Method.NO_AUTH in greeting.methods and self.svc.gw.auth == "none":
            method = Method.NO_AUTH
        else:
            self._fail(self.hs.select(Method.NO_ACCEPTABLE), "CONNECT", "auth_required")
            return
        self._write(self.hs.select(method))

    def _userpass(self, given: UserPass) -> None:
        accounts = self.svc.admitter.accounts
        if accounts is None:  # auth = "none": the username may carry routing parameters
            self._authenticated(given, None)
            return
        # auth = "users": who first, before any request (RFC 1929 failure status)
        if ":" in given.username:
            self._authenticated(given, None)
            return
        name = user_name(given.username)
        user = accounts.check_cached(name, given.password)
        if user is not None:
            self._authenticated(given, user)
            return
        # not verified yet: the slow check runs in a worker thread; the client waits for our status
        assert self.transport is not None
        self.transport.pause_reading()
        self.svc.spawn(self._verify(given, name), "socks-verify")

    async def _verify(self, given: UserPass, name: str) -> None:
        accounts = self.svc.admitter.accounts
        assert accounts is not None
        user = await accounts.verify(name, given.password, client=self.peer.rpartition(":")[0])
        if self.finished:
            return
        self._authenticated(given, user)
        if not self.finished and self.transport is not None:
            self.transport.resume_reading()
            if self.hs.buffer:  # a request sent before our status (optimistic clients)
                self.data_received(b"")

    def _authenticated(self, given: UserPass, user: str | None) -> None:
        ok = self.svc.admitter.accounts is None or user is not None
        status = self.hs.authenticated(ok)
        if not ok:
            self._fail(status, "CONNECT", "auth_required")
            return
        self.user = user
        self.credentials = Credentials(given.username, given.password) if given.username else None
        self._write(status)

    def _request(self, request: Request) -> None:
        self.answer = answer = SocksAnswer(request.version)
        if request.version == 4:
            if self.svc.gw.auth == "users":  # SOCKS4 has no password
                self._fail(reply4(False), "CONNECT", "auth_required")
                return
            if request.username:
                self.credentials = Credentials(request.username, "")
        head = connect_head(request.host, request.port)
        try:
            admission = self.svc.admitter.admit(head, verified=self.user, credentials=self.credentials, conn=self.slot)
        except Refusal as refusal:
            self._fail(answer.refused(refusal), "CONNECT", refusal.outcome)
            return
        except NeedsLease:  # credits not leased here yet: wait for the lease (bounded) in a task
            assert self.transport is not None
            self.transport.pause_reading()
            self.svc.spawn(self._admit_later(head), "socks-lease")
            return
        except NeedsVerification:  # not reached: RFC 1929 verified the user already
            self._fail(answer.refused(Refusal(407, "", "auth_required")), "CONNECT", "auth_required")
            return
        self._admitted(head, admission)

    async def _admit_later(self, head: http1.RequestHead) -> None:
        try:
            admission = await self.svc.admitter.admit_slow(
                head, self.peer, self.user, self.credentials, conn=self.slot
            )
        except Refusal as refusal:
            if not self.finished:
                self._fail(self.answer.refused(refusal), "CONNECT", refusal.outcome)
            return
        if self.finished or self.transport is None or self.transport.is_closing():  # the client left meanwhile
            self.svc.admitter.undo(admission, self.slot)
            return
        self.transport.resume_reading()
        self._admitted(head, admission)

    def _admitted(self, head: http1.RequestHead, admission: Admission) -> None:
        self.finished = True
        self._cancel_timer()
        self.early += self.hs.rest
        interceptor = self.slot.interceptor
        if interceptor is not None and not interceptor.bypassed(head.host):  # the interception port
            self._released = True  # the client connection has it back, slot and all
            early = bytes(self.early)
            self.early.clear()
            self.slot.intercept_socks(head, admission, self.credentials, self.answer.established(None), early)
            return
        self.request = Connect(self.svc, self, head, admission)
        self.request.start()

    # the client side of the Connect (gateway.proxy.exchange.ClientSide) ---------------------------
    def write(self, data: bytes) -> None:
        self._write(data)

    def body_wanted(self) -> None:  # a CONNECT has no request body
        pass

    def answered(self, request: Exchange | Connect, outcome: str, keep: bool) -> None:
        self.request = None
        self._count(request, outcome)
        self._close()

    def refused(self, request: Exchange | Connect, refusal: Refusal) -> None:
        self.request = None
        self._write(self.answer.refused(refusal))
        self._count(request, refusal.outcome)
        self._close()

    def tunnel(self, request: Connect, conn: UpstreamConnection, established: bytes) -> None:
        """A connection to the target is ready (pooled or fresh): the SOCKS success reply, then the client
        connection serves the session in fixed-target mode (HTTP requests over that connection, or a raw
        relay) and counts it, once, when it ends."""
        self.request = None
        assert self.transport is not None
        self._write(self.answer.established(request.proxy))
        self._released = True  # the client connection releases the slot from here on
        head = request.head

        def ended(fixed: FixedTarget) -> None:
            request.sent, request.received = fixed.sent, fixed.received
            self._count(request, "ok")

        fixed = FixedTarget(request.proxy, head.host, head.port, request.admission, conn, self.svc.dialer.pool, ended)
        early = bytes(self.early)
        self.early.clear()
        if not self.transport.is_reading():
            self.transport.resume_reading()  # paused at HELD_MAX: the client connection reads on (and pauses as it must)
        self.slot.serve_fixed(fixed, early)

    # endings -----------------------------------------------------------------------------------
    def _timed_out(self) -> None:
        self._timer = None
        if self.finished:
            return
        reply = reply5(Reply.TTL_EXPIRED) if self.hs.state is State.REQUEST else b""
        self._fail(reply, "?", "timeout")

    def _fail(self, reply: bytes, method: str, outcome: str) -> None:
        self.finished = True
        if reply:
            self._write(reply)
        self.svc.accounting.count(method, outcome, 0.0, self.protocol)
        self._close()

    def _count(self, request: Exchange | Connect, outcome: str) -> None:
        accounting = self.svc.accounting
        seconds = time.perf_counter() - request.started
        request.admission.done(request.sent, request.received)  # the user's usage (no metric label)
        if not accounting.access:
            accounting.count(request.head.method, outcome, seconds, self.protocol)
            return
        accounting.request_done(
            request.head.method, outcome, seconds, peer=self.peer, user=request.admission.user,
            host=http1.format_authority(request.head.host, request.head.port), status=200 if outcome == "ok" else request.status, upstream=request.proxy,
            sent=request.sent, received=request.received, protocol=self.protocol,
        )

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()  # connection_lost releases the slot

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.slot.socks_done()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def connect_head(host: str, port: int) -> http1.RequestHead:
    """The CONNECT head an HTTP client would have sent for this target: admission reads nothing else."""
    authority = http1.format_authority(host, port)
    return http1.RequestHead(
        method="CONNECT",
        target=authority,
        version="HTTP/1.1",
        headers=[("Host", authority)],
        host=host,
        port=port,
        path="",
        is_connect=True,
        content_length=None,
        chunked=False,
        keep_alive=False,
        expect_continue=False,
        proxy_authorization=None,
        pool_params={},
        upgrade=None,
    )
