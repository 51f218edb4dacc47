"""Steps 4 to 6 of a request, pick -> dial or reuse -> relay, across attempts on several upstreams.

``Exchange`` carries one HTTP request: it picks an upstream (``selector.pick``, in memory), takes an
idle connection to that upstream and target from the pool or has one dialed, sends the head, streams
the body (flow control both ways, never buffered whole) and relays the answer from the connection's
callbacks straight into the client's transport.  ``Connect`` does the same for a client's CONNECT and
ends in a tunnel.  Failures move to the next upstream while that is safe:

* a dial that failed, always (nothing was sent);
* after sending, only an idempotent request without a body (RFC 9110 9.2.2); others get the 502/504;
* a request with a body, or one not idempotent, never rides a pooled connection (the upstream may
  have closed it while we sent: nothing would tell us whether it acted), so it is never lost to one;
* a ban (a status in ``retry_on_status``, or a ``[[gateway.ban_rules]]`` match, whose body may have to
  be read first: ``gateway.proxy.bans``) rests that upstream for the site (``selector.ban``) and is held
  back while another upstream tries; the last one held goes to the client when nobody does better;
* hedging (``gateway.hedge_after``): an idempotent request without a body whose upstream has not
  answered by then is also sent through a second upstream (``_Hedge``); the first head wins, the other
  connection is closed (never pooled mid-answer), a pending dial cancelled; one hedge races at a time
  (each counts as one of ``max_retries``), charged once; a hedge that fails or is banned while the first
  attempt still has no answer is followed at once by the next upstream's (``_rehedge``);
* a connection-bound handshake (NTLM, Negotiate) binds its connection to the client
  (``gateway.proxy.bound``): that user's next requests on that client connection to the target ride it,
  nobody else's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from gateway.proxy import fasthead, http1
from gateway.proxy.bans import BAN
from gateway.proxy.bound import BoundConnections
from gateway.proxy.connection import SNIFF, SNIFF_MAX, UpstreamConnection
from gateway.proxy.dialing import Plan
from gateway.proxy.fixed import FixedTarget
from gateway.proxy.intercept import Site
from gateway.proxy.refusals import Admission, Attempts, Refusal
from gateway.proxy.services import Services
from gateway.proxy.upstream import UpstreamError, UpstreamTimeout, proxy_authorization
from pool.models import Proxy
from pool.sites import site_of

__all__ = ["ClientSide", "Connect", "Exchange"]

_KEEP_ALIVE = (("Connection", "keep-alive"),)
HEDGE_MIN = 0.5  # hedge_after = "auto": never sooner than this
HEDGE_UNMEASURED = 1.0  # ... and for a site with no head times yet
_UNTIL_CLOSE = http1.FramingKind.UNTIL_CLOSE


class ClientSide(Protocol):
    """What a request needs from its client connection (``gateway.proxy.client.ClientConnection``)."""

    peer: str
    pools_tunnels: bool  # a CONNECT may ride an idle pooled connection to its target (a SOCKS client)
    bound: BoundConnections | None  # its connection-authenticated upstream connections (NTLM, Negotiate)
    site: Site | None  # an intercepted TLS session's site (gateway.proxy.intercept): TLS to it on each tunnel

    def write(self, data: bytes) -> None: ...
    def answered(self, request: Exchange | Connect, outcome: str, keep: bool) -> None: ...
    def refused(self, request: Exchange | Connect, refusal: Refusal) -> None: ...
    def body_wanted(self) -> None: ...
    def tunnel(self, request: Connect, conn: UpstreamConnection, established: bytes) -> None: ...


class _Attempting:
    """What both kinds of request share: the picks so far and why they failed."""

    __slots__ = (
        "_attempts",
        "_gen",
        "admission",
        "client",
        "conn",
        "direct_tried",
        "finished",
        "head",
        "proxy",
        "received",
        "sent",
        "site",
        "started",
        "status",
        "svc",
        "tried",
    )

    def __init__(self, svc: Services, client: ClientSide, head: http1.RequestHead, admission: Admission) -> None:
        self.svc = svc
        self.client = client
        self.head = head
        self.admission = admission
        self.site = client.site
        self.tried: set[int] = set()
        self.direct_tried = False
        self._attempts: Attempts | None = None  # made on the first failure only
        self._gen = 0  # bumped when an attempt under way is abandoned (a hedge won): its dial is stale
        self.proxy: Proxy | None = None
        self.conn: UpstreamConnection | None = None
        self.started = time.perf_counter()
        self.finished = False
        self.status = 0
        self.sent = 0
        self.received = 0

    @property
    def target(self) -> str:
        """``host:port`` of the request, for passive health (``UpstreamError(target=...)``)."""
        return f"{self.head.host}:{self.head.port}"

    @property
    def attempts(self) -> Attempts:
        if self._attempts is None:
            self._attempts = Attempts()
        return self._attempts

    def _pick(self, tunnel: bool = False) -> tuple[bool, Proxy | None]:
        """(True, proxy), (True, None) for the direct fallback, or (False, None) when nothing is left;
        raises the 503 when nothing matched at all.  ``tunnel`` (a CONNECT): never an upstream known
        not to carry tunnels."""
        svc = self.svc
        if self.admission.direct:  # a gateway rule: through no upstream, once
            if self.direct_tried:
                return False, None
            self.direct_tried = True
            return True, None
        if len(self.tried) + self.direct_tried > svc.gw.max_retries:
            return False, None
        route = self.admission.route
        proxy = svc.selector.pick(route, exclude=self.tried, host=self.head.host, tunnel=tunnel)
        if proxy is not None:
            self.tried.add(proxy.id)
            return True, proxy
        if route.strict and (self.tried or svc.selector.session_upstream(route.session or "") is not None):
            raise self._strict_lost(route.session or "")
        if self.tried or self.direct_tried:
            return False, None
        if svc.gw.fallback != "direct":
            raise _no_proxy(self.admission)
        self.direct_tried = True
        return True, None

    def _strict_lost(self, session: str) -> Refusal:
        """A strict session whose upstream failed: 502, never another upstream."""
        refusal = Refusal(502, f"session {session}: its upstream failed and the session is strict", "upstream_error")
        refusal.cause = self._attempts.last if self._attempts is not None else None
        return refusal

    def _debug_headers(self) -> list[tuple[str, str]]:
        if not self.svc.gw.debug_headers:
            return []
        return [("X-Proxy-Pool-Upstream", str(self.proxy.id) if self.proxy else "direct")]

    def _refuse(self, refusal: Refusal) -> None:
        if self.finished:
            return
        self.finished = True
        self.status = refusal.status
        self.svc.admitter.refund_own_failure(self.admission, refusal)
        self.client.refused(self, refusal)

    def _failed(self, exc: UpstreamError) -> None:
        self.conn = None
        self.attempts.failed(self.proxy, exc)
        self.svc.accounting.report(self.proxy, False, exc)

    def _attempt(self) -> None:
        """Pick the next upstream and try it; each kind of request says how."""

    async def _dialed(self, plan: Plan, host: str, port: int, tunnel_only: bool) -> UpstreamConnection | None:
        """A fresh connection for this attempt, or None when the dial failed (the next attempt is under
        way, or the refusal sent) or the request ended meanwhile (the connection is closed)."""
        gen = self._gen
        try:
            conn = await self.svc.dialer.dial(plan, host, port, tunnel_only=tunnel_only)
        except UpstreamError as exc:
            if gen == self._gen:
                self._dial_failed(exc)
            else:  # an abandoned attempt's dial: counted against its upstream, nothing more
                self.svc.accounting.report(plan.proxy, False, exc)
            return None
        except Refusal as refusal:
            if gen == self._gen:
                self._refuse(refusal)
            return None
        if self.finished or gen != self._gen:
            conn.close()
            return None
        return conn

    def _dial_failed(self, exc: UpstreamError) -> None:
        """A dial that failed: counted, then the next upstream (the direct fallback is one try)."""
        if self.finished:
            return
        self._failed(exc)
        if self.proxy is None:
            self._out_of_attempts()
        else:
            self._attempt()

    def _out_of_attempts(self) -> None:
        """No upstream left to try: our own refusal, saying why each attempt failed."""
        self._refuse(self.attempts.refusal())


def _no_proxy(admission: Admission) -> Refusal:
    what = admission.route.describe()
    if what == "any":
        return Refusal(503, "no active proxy in the pool yet", "no_proxy")
    return Refusal(503, f"no active proxy for {what}", "no_proxy")


class Exchange(_Attempting):
    """One HTTP request (not CONNECT), across attempts."""

    __slots__ = (
        "_banned",
        "_continued",
        "_dialing",
        "_fresh_retry",
        "_hedge",
        "_hedge_timer",
        "_out",
        "_plan",
        "_since",
        "_sniffing",
        "body",
        "body_done",
        "fixed",
        "keep",
        "responded",
        "retryable",
    )

    def __init__(
        self,
        svc: Services,
        client: ClientSide,
        head: http1.RequestHead,
        admission: Admission,
        fixed: FixedTarget | None = None,
    ) -> None:
        super().__init__(svc, client, head, admission)
        self.fixed = fixed  # a SOCKS session's request: its target, upstream and connection are the session's
        self.body = head.chunked or bool(head.content_length)
        self.retryable = not self.body and head.method in http1.IDEMPOTENT
        self.body_done = not self.body
        self.responded = False
        self.keep = False
        self._fresh_retry = False
        self._continued = False  # our 100 Continue went to the client
        self._out = b""
        self._plan: Plan | None = None
        # a ban answer held back while another upstream tries: (proxy, its parked connection, head, None),
        # or (proxy, None, head, body) for one read whole (a ban rule's body_contains)
        self._banned: tuple[Proxy, UpstreamConnection | None, http1.ResponseHead, bytes | None] | None = None
        self._sniffing: tuple[http1.ResponseHead, http1.FramingKind, tuple[bytes, ...]] | None = None
        self._since = self.started  # when the current attempt began (the site's head times)
        self._hedge: _Hedge | None = None  # a second attempt racing this one
        self._dialing: asyncio.Future[None] | None = None  # this attempt's dial under way
        self._hedge_timer: asyncio.TimerHandle | None = None

    @property
    def target(self) -> str:
        fixed = self.fixed
        return f"{self.head.host}:{self.head.port}" if fixed is None else f"{fixed.host}:{fixed.port}"

    @property
    def host(self) -> str:
        """The target host (a SOCKS session's own target, not its Host header)."""
        return self.head.host if self.fixed is None else self.fixed.host

    # attempts -----------------------------------------------------------------------------
    def _attempt(self) -> None:
        if self.finished:
            return
        if self._hedge is not None:  # the attempt failed while a hedge races it: the hedge carries on alone
            self._promote(self._hedge)
            return
        self._since = time.perf_counter()
        fixed = self.fixed
        if fixed is not None:  # the session's one upstream, once (the Host header routes nothing)
            if self.tried or self.direct_tried:
                self._out_of_attempts()
                return
            self._fixed_attempt(fixed)
            return
        bounds = self.client.bound
        if bounds is not None and not self.tried and not self.direct_tried:
            bound = bounds.take(self.admission.user, self.head.host, self.head.port)
            if bound is not None and bound.conn is not None:
                self._bound_attempt(bound.proxy, bound.conn)
                return
        try:
            go, proxy = self._pick()
        except Refusal as refusal:
            self._refuse(refusal)
            return
        if not go:
            self._out_of_attempts()
            return
        self.proxy = proxy
        head = self.head
        svc = self.svc
        plan = self._plan = svc.dialer.plan(proxy, head.host, head.port, tunnel_only=False, site=self.site)
        conn = svc.dialer.reuse(plan.key) if self.retryable else None
        if conn is not None:
            self._send(conn)
        else:
            self._dial(fresh_retry=False)

    def _bound_attempt(self, proxy: Proxy | None, conn: UpstreamConnection) -> None:
        """The client's bound connection to this target, through its upstream (no pick): a handshake,
        or what it authenticated, stays on the one connection."""
        self.proxy = proxy
        if proxy is None:
            self.direct_tried = True
        else:
            self.tried.add(proxy.id)
        self._plan = self.svc.dialer.plan(proxy, self.head.host, self.head.port, tunnel_only=False, site=self.site)
        self._send(conn)

    def _bind(self, conn: UpstreamConnection) -> None:
        """``conn`` carries a connection-bound handshake: it is this client's from now on, never pooled
        (the connection this user bound before on this client connection, to another target, closes)."""
        client = self.client
        if client.bound is None:
            client.bound = BoundConnections()
        client.bound.bind(conn, self.proxy, self.admission.user, self.head.host, self.head.port)

    def _fixed_attempt(self, fixed: FixedTarget) -> None:
        proxy = self.proxy = fixed.proxy
        if proxy is None:
            self.direct_tried = True
        else:
            self.tried.add(proxy.id)
        self._plan = self.svc.dialer.plan(proxy, fixed.host, fixed.port, tunnel_only=True)
        conn = fixed.take(fresh_only=not self.retryable)
        if conn is not None:
            self._send(conn)
        else:
            self._dial(fresh_retry=False)

    def start(self) -> None:
        """The first attempt, and the hedge's timer when this request may be hedged."""
        self._attempt()
        if (
            self.proxy is not None
            and self.retryable
            and not self.finished
            and self.fixed is None
            and self.admission.route.session is None  # a session keeps its one exit
            and self.client.bound is None
        ):
            after = self.svc.gw.hedge_after
            if after != "off":
                if after == "auto":
                    p90 = self.svc.selector.sites.p90(site_of(self.head.host))
                    delay = HEDGE_UNMEASURED if p90 is None else max(HEDGE_MIN, p90)
                else:
                    delay = float(after)
                self._hedge_timer = self.svc.loop.call_later(delay, self._hedge_now)

    def _dial(self, fresh_retry: bool) -> None:
        self._fresh_retry = fresh_retry
        self._dialing = cast("asyncio.Future[None]", self.svc.spawn(self._dial_task(), "upstream-dial"))

    async def _dial_task(self) -> None:
        plan = self._plan
        assert plan is not None
        fixed = self.fixed
        if fixed is None:
            conn = await self._dialed(plan, self.head.host, self.head.port, tunnel_only=False)
        else:
            conn = await self._dialed(plan, fixed.host, fixed.port, tunnel_only=True)
        if conn is not None:
            self._send(conn)

    def _request_bytes(self, plan: Plan, proxy: Proxy | None) -> bytes:
        """The request head as this attempt's upstream (or the target) is sent it."""
        head = self.head
        if plan.absolute:
            assert proxy is not None
            extra = proxy_authorization(proxy.upstream)
            extra.append(("Connection", "keep-alive"))
            return http1.forward_request_head(head, absolute=True, extra=extra)
        if self.site is None:
            return head.origin_form or http1.forward_request_head(head, absolute=False, extra=_KEEP_ALIVE)
        return head.origin_form or http1.forward_request_head(
            head, absolute=False, extra=_KEEP_ALIVE, authority=self.site.authority
        )

    def _send(self, conn: UpstreamConnection) -> None:
        head = self.head
        plan = self._plan
        assert plan is not None
        self.conn = conn
        if self.fixed is not None:
            self.fixed.hold(conn)
            self.fixed.served += 1
        elif head.binds_connection:
            self._bind(conn)
        self._out = self._request_bytes(plan, self.proxy)
        conn.dechunk = [] if head.version == "HTTP/1.0" else None
        conn.request_sent = self.body_done
        gw = self.svc.gw
        conn.send(self, head.method, self._out, gw.response_timeout if self.body_done else gw.read_timeout, gw.read_timeout)
        if not self.body_done:
            if head.expect_continue and not self._continued:
                self._continued = True
                self.client.write(http1.CONTINUE_100)
            self.client.body_wanted()

    def _out_of_attempts(self) -> None:
        """No upstream left: a held ban answer is passed on as it is, else our own refusal."""
        banned, self._banned = self._banned, None
        if banned is not None and not self.finished:
            proxy, conn, resp, body = banned
            self.proxy = proxy
            self.conn = conn
            framing = http1.response_body_framing(resp, self.head.method)
            out = self._client_head(resp, framing.kind)
            if conn is not None:
                conn.unpark(self, out)
            else:  # read whole: it goes on from memory
                assert body is not None
                self.relay(out + body, len(body))
                self.done()
            return
        super()._out_of_attempts()

    # hedging ------------------------------------------------------------------------------------
    def _hedge_now(self) -> None:
        """``hedge_after`` passed without an answer's head: the same request through a second upstream."""
        self._hedge_timer = None
        if self.finished or self.responded or self._hedge is not None or self.proxy is None or self._sniffing:
            return
        svc = self.svc
        if len(self.tried) > svc.gw.max_retries:
            return
        head = self.head
        proxy = svc.selector.pick(self.admission.route, exclude=self.tried, host=head.host)
        if proxy is None:
            return
        self.tried.add(proxy.id)
        plan = svc.dialer.plan(proxy, head.host, head.port, tunnel_only=False, site=self.site)
        hedge = self._hedge = _Hedge(self, proxy, plan)
        svc.accounting.hedged(False)
        hedge.start()

    def _rehedge(self, first: Proxy | None) -> None:
        """A hedge failed or was banned while racing: while the same first attempt still has no answer,
        the next upstream races it at once (not after the stall's response_timeout), within max_retries."""
        if self.proxy is first and self._hedge_timer is None:
            self._hedge_now()

    def _adopt(self, hedge: _Hedge) -> None:
        """The hedge's head came first: the first attempt is abandoned (its connection closed, never
        pooled mid-answer; a dial under way cancelled, and closed should it land anyway) and the hedge's
        connection is this request's from now on."""
        self._hedge = None
        self._gen += 1
        self._sniffing = None  # (an answer the first attempt was reading whole goes with it)
        _cancel(self._dialing)  # a dial under way stops now (its socket closed), not at its timeout
        self._dialing = None
        old = self.conn
        if old is not None:
            old.close()
        if self.proxy is not None:  # the loser was this slow at the site at least
            self.svc.selector.slow(self.proxy, self.head.host, time.perf_counter() - self._since)
        self._take_over(hedge)
        conn = hedge.conn
        assert conn is not None
        self.conn = conn
        conn.receiver = self

    def _promote(self, hedge: _Hedge) -> None:
        """The first attempt failed while the hedge races it: the hedge is the attempt now (no new pick)."""
        self._hedge = None
        hedge.state = _WON
        self._take_over(hedge)
        self._dialing = hedge.dialing  # its dial, if still under way, is this request's now
        conn = hedge.conn
        if conn is not None:
            self.conn = conn
            conn.receiver = self
        # else its dial lands in _Hedge._dial_task, which hands the connection to _send

    def _take_over(self, hedge: _Hedge) -> None:
        self.proxy = hedge.proxy
        self._plan = hedge.plan
        self._since = hedge.since
        self._fresh_retry = False
        self.svc.accounting.hedged(True)

    def _end_hedge(self) -> None:
        """The request was answered (or ended) otherwise: the hedge timer and any hedge racing go."""
        if self._hedge_timer is not None:
            self._hedge_timer.cancel()
            self._hedge_timer = None
        hedge, self._hedge = self._hedge, None
        if hedge is not None:
            hedge.drop()

    def _refuse(self, refusal: Refusal) -> None:
        if self._hedge_timer is not None or self._hedge is not None:
            self._end_hedge()
        super()._refuse(refusal)

    # the request body, from the client ---------------------------------------------------------
    def body_data(self, data: bytes) -> bool:
        """Body bytes for the upstream; False when the upstream's buffer is full (pause the client)."""
        conn = self.conn
        if conn is None:
            return False
        conn.write(data)
        self.sent += len(data)
        self.svc.accounting.bytes("client_to_upstream", len(data))
        return not conn.write_paused

    def body_end(self) -> None:
        self.body_done = True
        if self.conn is not None:
            self.conn.wait_answer(self.svc.gw.response_timeout)

    def writable(self) -> None:
        if not self.body_done:
            self.client.body_wanted()

    # the answer, from the connection -----------------------------------------------------------
    def _may_retry_ban(self) -> bool:
        """Whether a ban may be retried through another upstream (else the answer goes on)."""
        return (
            self.fixed is None  # a SOCKS session has its one upstream
            and not self.admission.route.strict  # so has a strict session: the site's answer goes on
            and self.retryable
            and len(self.tried) <= self.svc.gw.max_retries
            and (self.conn is None or self.conn.holder is None)  # a bound connection has its one upstream
        )

    def _banned_here(self, resp: http1.ResponseHead, body: bytes | None) -> bool:
        """A ban: the upstream rests for the site (it works: no passive failure).  True when the answer
        is held back while another upstream tries."""
        svc = self.svc
        proxy = self.proxy
        assert proxy is not None
        svc.selector.ban(proxy, self.host)
        svc.accounting.report(proxy, True)
        svc.accounting.failure("banned")
        if not self._may_retry_ban():
            return False
        if self._banned is not None and self._banned[1] is not None:
            self._banned[1].close()
        self._banned = (proxy, self.conn if body is None else None, resp, body)
        self.conn = None
        svc.loop.call_soon(self._attempt)
        return True

    def plain_head(self, data: bytes, plain: fasthead.PlainResponse) -> bytes | None:
        """The head for the client, sliced from an everyday one (the bytes ``response_head`` would build)."""
        svc = self.svc
        gw = svc.gw
        status, framing, _, _, cut_start, cut_end, fields_end, _ = plain
        if status in svc.bans.statuses and self.proxy is not None:
            return None  # maybe a ban: the connection parses it fully and asks response_head
        if status == 401 and self.fixed is None:
            return None  # maybe a connection-bound challenge: response_head looks
        self._answering(status)
        self.keep = keep = self.head.keep_alive and framing is not _UNTIL_CLOSE and not svc.closing
        ending = fasthead.KEEP_ALIVE if keep else fasthead.CLOSE
        if gw.debug_headers:
            extra = [f"{name}: {value}\r\n".encode("latin-1") for name, value in self._debug_headers()]
            ending = b"".join(extra) + ending
        if cut_start == fields_end:  # no Connection line to cut
            return data[:fields_end] + ending
        return data[:cut_start] + data[cut_end:fields_end] + ending

    def response_head(self, resp: http1.ResponseHead, framing: http1.FramingKind) -> bytes | None:
        bans = self.svc.bans
        if resp.status in bans.statuses and self.proxy is not None:
            verdict = bans.verdict(self.host, resp.status)
            if verdict is BAN:
                if self._banned_here(resp, None):
                    return None  # the connection holds it, unread
            elif (
                verdict
                and self.head.version != "HTTP/1.0"  # (its answer is de-chunked on the way: not read whole)
                and framing is not http1.FramingKind.NONE
                and (resp.content_length is None or resp.content_length <= SNIFF_MAX)
            ):
                self._sniffing = (resp, framing, verdict)
                return SNIFF
        if resp.status == 401 and self.fixed is None and self.conn is not None and http1.challenges_connection(resp):
            self._bind(self.conn)
        self._answering(resp.status)
        return self._client_head(resp, framing)

    def sniffed(self, body: bytes, whole: bool) -> bytes | None:
        """The body of an answer a ban rule looks into, read whole (or its first ``SNIFF_MAX`` bytes):
        None when it is a ban held back (another upstream tries), else the head for the client."""
        assert self._sniffing is not None
        resp, framing, needles = self._sniffing
        self._sniffing = None
        if whole and self.svc.bans.body_bans(needles, body, resp) and self._banned_here(resp, body):
            return None
        self._answering(resp.status)
        return self._client_head(resp, framing)

    def _answering(self, status: int) -> None:
        self.responded = True
        self.status = status
        if self._hedge_timer is not None or self._hedge is not None:
            self._end_hedge()
        if self._banned is not None:
            if self._banned[1] is not None:
                self._banned[1].close()
            self._banned = None

    def _client_head(self, resp: http1.ResponseHead, framing: http1.FramingKind) -> bytes:
        self.responded = True
        self.status = resp.status
        if self._hedge_timer is not None or self._hedge is not None:
            self._end_hedge()
        dechunk = self.head.version == "HTTP/1.0"  # a 1.0 client cannot read chunked framing
        self.keep = (
            self.head.keep_alive and framing is not http1.FramingKind.UNTIL_CLOSE and not self.svc.closing and not dechunk
        )
        return http1.forward_response_head(resp, keep_alive=self.keep, extra=self._debug_headers(), dechunk=dechunk)

    def relay(self, data: bytes, body_bytes: int) -> None:
        self.client.write(data)
        self.received += body_bytes
        self.svc.accounting.bytes("upstream_to_client", body_bytes)

    def done(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._hedge_timer is not None or self._hedge is not None:
            self._end_hedge()
        if self.body_done:
            self.conn = None  # else the rest of the body still goes out on it (an early answer)
        if self.proxy is not None:  # passive health: a real success, and the site's record of it
            self.svc.selector.served(self.proxy, self.host, time.perf_counter() - self._since)
        self.client.answered(self, "ok", self.keep)

    def cut_short(self) -> None:
        """The answer broke after bytes went to the client: nothing to retry, close the client."""
        if self.finished:
            return
        self.finished = True
        if self._hedge_timer is not None or self._hedge is not None:
            self._end_hedge()
        self.conn = None
        self.svc.accounting.report(self.proxy, False, UpstreamError("upstream cut the answer short", "reset", target=self.target))
        self.client.answered(self, "upstream_error", False)

    def timed_out(self, conn: UpstreamConnection) -> None:
        conn.close()
        if self.finished:
            return
        if self.responded:
            self.cut_short()
        else:
            self._after_send_failure(UpstreamTimeout("upstream did not answer in time", target=self.target))

    def upstream_failed(self, conn: UpstreamConnection, message: str) -> None:
        if self.responded:
            self.cut_short()
        else:
            self._after_send_failure(UpstreamError(message, "protocol_error", target=self.target))

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        """The upstream closed before answering: a stale pooled connection gets one fresh try."""
        if self.finished:
            return
        if conn.uses > 0 and not self._fresh_retry and self.retryable:
            self.conn = None
            self._dial(fresh_retry=True)
            return
        self._after_send_failure(
            UpstreamError("upstream closed the connection without answering", "reset", target=self.target)
        )

    def _after_send_failure(self, exc: UpstreamError) -> None:
        self._failed(exc)
        if self.retryable:
            self._attempt()
        else:
            self._out_of_attempts()  # it may have been acted on, or its body is gone: never sent twice

    def abort(self) -> None:
        """The client went away: everything this request holds upstream is closed at once."""
        self.finished = True
        for conn in (self.conn, self._banned[1] if self._banned else None):
            if conn is not None:
                conn.close()
        self._sniffing = None
        self._end_hedge()
        _cancel(self._dialing)
        self._dialing = None
        self.conn = None
        self._banned = None


_RACING, _WON, _DROPPED = 0, 1, 2


def _cancel(dialing: asyncio.Future[None] | None) -> None:
    """Stop a dial under way (the dialer closes its socket on cancellation)."""
    if dialing is not None and not dialing.done():
        dialing.cancel()


class _Hedge:
    """The second attempt of a hedged request, racing the first.  It is its connection's receiver only
    while racing: its first head makes it the winner (``Exchange._adopt``: the connection's receiver is
    the exchange from then on), a failure or a ban while racing ends it quietly (the first attempt goes
    on), and when the first attempt fails it carries on as the request's attempt (``_promote``)."""

    __slots__ = ("conn", "dialing", "exchange", "plan", "proxy", "since", "state")

    def __init__(self, exchange: Exchange, proxy: Proxy, plan: Plan) -> None:
        self.exchange = exchange
        self.proxy = proxy
        self.plan = plan
        self.conn: UpstreamConnection | None = None
        self.since = time.perf_counter()
        self.state = _RACING
        self.dialing: asyncio.Future[None] | None = None

    def start(self) -> None:
        conn = self.exchange.svc.dialer.reuse(self.plan.key)
        if conn is not None:
            self._send(conn)
        else:
            self.dialing = cast("asyncio.Future[None]", self.exchange.svc.spawn(self._dial_task(), "upstream-hedge"))

    async def _dial_task(self) -> None:
        ex = self.exchange
        try:
            conn = await ex.svc.dialer.dial(self.plan, ex.head.host, ex.head.port, tunnel_only=False)
            self.dialing = None
        except UpstreamError as exc:
            self.dialing = None
            if self.state == _RACING:
                self._lost(exc)
            elif self.state == _WON and ex._plan is self.plan:  # promoted while dialing: it was the attempt
                ex._dial_failed(exc)
            return
        except Refusal as refusal:
            self.dialing = None
            if self.state == _RACING:
                self._lost(None)
            elif self.state == _WON and ex._plan is self.plan:
                ex._refuse(refusal)
            return
        if self.state == _RACING:
            self._send(conn)
        elif self.state == _WON and ex._plan is self.plan and not ex.finished:
            ex._send(conn)
        else:
            conn.close()

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        ex = self.exchange
        conn.dechunk = [] if ex.head.version == "HTTP/1.0" else None
        conn.request_sent = True
        gw = ex.svc.gw
        conn.send(self, ex.head.method, ex._request_bytes(self.plan, self.proxy), gw.response_timeout, gw.read_timeout)

    def drop(self) -> None:
        """The request was answered otherwise (or ended): this attempt's connection closes."""
        self.state = _DROPPED
        _cancel(self.dialing)
        self.dialing = None
        if self.conn is not None:
            self.conn.close()

    def _lost(self, exc: UpstreamError | None) -> None:
        """Failed while racing: counted against its upstream, and the first attempt goes on alone."""
        ex = self.exchange
        if ex._hedge is self:
            ex._hedge = None
            if not ex.finished and not ex.responded:  # the first attempt still has no answer: next upstream
                ex.svc.loop.call_soon(ex._rehedge, ex.proxy)
        self.drop()
        if exc is not None:
            ex.svc.accounting.report(self.proxy, False, exc)

    # Receiver: while racing, the first head decides; after, everything is the exchange's ----------
    def plain_head(self, data: bytes, plain: fasthead.PlainResponse) -> bytes | None:
        ex = self.exchange
        if self.state == _DROPPED:
            return None
        if self.state == _RACING:
            if plain[0] in ex.svc.bans.statuses:
                return None  # maybe a ban: response_head decides
            ex._adopt(self)
            self.state = _WON
        return ex.plain_head(data, plain)

    def response_head(self, resp: http1.ResponseHead, framing: http1.FramingKind) -> bytes | None:
        ex = self.exchange
        if self.state == _RACING:
            bans = ex.svc.bans
            if resp.status in bans.statuses and bans.verdict(ex.host, resp.status) is BAN:
                ex.svc.selector.ban(self.proxy, ex.host)  # banned here: the first attempt goes on
                ex.svc.accounting.failure("banned")
                self._lost(None)
                return None
            ex._adopt(self)
            self.state = _WON
        elif self.state == _DROPPED:
            return None
        return ex.response_head(resp, framing)

    def sniffed(self, body: bytes, whole: bool) -> bytes | None:
        return self.exchange.sniffed(body, whole)

    def relay(self, data: bytes, body_bytes: int) -> None:
        self.exchange.relay(data, body_bytes)

    def done(self) -> None:
        self.exchange.done()

    def cut_short(self) -> None:
        self.exchange.cut_short()

    def writable(self) -> None:
        if self.state == _WON:
            self.exchange.writable()

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if self.state == _RACING:
            self._lost(UpstreamError("upstream closed the connection without answering", "reset", target=self.exchange.target))
        elif self.state == _WON:
            self.exchange.upstream_lost(conn)

    def upstream_failed(self, conn: UpstreamConnection, message: str) -> None:
        if self.state == _RACING:
            self._lost(UpstreamError(message, "protocol_error", target=self.exchange.target))
        elif self.state == _WON:
            self.exchange.upstream_failed(conn, message)

    def timed_out(self, conn: UpstreamConnection) -> None:
        if self.state == _RACING:
            self._lost(UpstreamTimeout("upstream did not answer in time", target=self.exchange.target))
        elif self.state == _WON:
            self.exchange.timed_out(conn)
        else:
            conn.close()


class Connect(_Attempting):
    """A client's CONNECT: a fresh tunnel through the first upstream that opens one, or, for a client
    side that ``pools_tunnels`` (SOCKS, ``gateway.proxy.fixed``), an idle pooled connection to the target
    through the upstream picked."""

    __slots__ = ()

    def _attempt(self) -> None:
        if self.finished:
            return
        try:
            go, proxy = self._pick(tunnel=True)
        except Refusal as refusal:
            self._refuse(refusal)
            return
        if not go:
            self._out_of_attempts()
            return
        self.proxy = proxy
        if self.client.pools_tunnels:
            head = self.head
            dialer = self.svc.dialer
            conn = dialer.reuse(dialer.plan(proxy, head.host, head.port, tunnel_only=True, site=self.site).key)
            if conn is not None:
                self._through(conn)
                return
        self.svc.spawn(self._dial_task(proxy), "upstream-tunnel")

    start = _attempt

    async def _dial_task(self, proxy: Proxy | None) -> None:
        head = self.head
        plan = self.svc.dialer.plan(proxy, head.host, head.port, tunnel_only=True, site=self.site)
        conn = await self._dialed(plan, head.host, head.port, tunnel_only=True)
        if conn is not None:
            if proxy is not None:  # passive health, and the site's record (a tunnel: no head time)
                self.svc.selector.served(proxy, head.host, None)
            self._through(conn)

    def _through(self, conn: UpstreamConnection) -> None:
        self.status = 200
        established = http1.CONNECT_ESTABLISHED
        extra = self._debug_headers()
        if extra:
            established = established[:-2] + b"".join(f"{k}: {v}\r\n".encode() for k, v in extra) + b"\r\n"
        self.finished = True
        self.conn = conn
        self.client.tunnel(self, conn, established)

    def abort(self) -> None:
        self.finished = True
        if self.conn is not None:
            self.conn.close()
            self.conn = None
