"""The common case without coroutines: a bodiless HTTP/1.1 request through a pooled HTTP upstream.

Every client connection starts here as an ``asyncio.Protocol``.  A request that needs nothing
special (no body, no CONNECT, an HTTP upstream) is served by callbacks alone: the head is parsed in
``data_received``, written to a kept-alive upstream connection, and the answer is relayed from the
upstream's ``data_received`` straight into the client's transport.  No task, no StreamReader, no
timer per request.  Anything else (CONNECT, bodies, ``Expect``, HTTP/1.0, SOCKS upstreams, ban
retries, the direct fallback) hands the connection to the stream-based path in ``gateway.proxy.server``,
which is the reference behaviour; the fast path must answer exactly as that path would.

Measured reason (bench/gateway_bench.py): the stream path spent most of its time in task wake-ups,
StreamReader bookkeeping and per-request timeout handles, not in parsing.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from gateway.proxy import fasthead, http1
from gateway.proxy.errors import BadRequest, BadResponse
from gateway.proxy.refusals import Admission, Attempts, Picked, Refusal
from gateway.proxy.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    proxy_authorization,
    tls_open_error,
)

if TYPE_CHECKING:
    from gateway.proxy.server import GatewayServer
    from pool.models import Proxy

__all__ = ["ClientProtocol", "UpstreamProtocol"]

_KEEP_ALIVE = (("Connection", "keep-alive"),)
_LENGTH = http1.FramingKind.LENGTH


class UpstreamProtocol(asyncio.Protocol):
    """One kept-alive connection to an HTTP upstream, serving one exchange at a time."""

    def __init__(self, server: GatewayServer, key: object) -> None:
        self.server = server
        self.key = key
        self.transport: asyncio.Transport | None = None
        self._loop = server.loop
        self.exchange: Exchange | None = None
        self.uses = 0
        self.idle_since = time.monotonic()
        self.closed = False
        self._head = bytearray()
        self._responded = False  # a final response head arrived for the current exchange
        self._keep_alive = False  # and it lets us reuse this connection
        self._body: http1.BodyTracker | None = None
        self.handshake: asyncio.Future[int] | None = None  # CONNECT answer status, while tunnelling
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    # the pool's view -----------------------------------------------------------------------
    def is_usable(self, now: float, idle_timeout: float) -> bool:
        return not self.closed and now - self.idle_since < idle_timeout

    def is_open(self) -> bool:
        return not self.closed

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    # protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, exchange: Exchange, data: bytes, timeout: float) -> None:
        """Write a request; ``exchange`` hears of the answer, or of its absence after ``timeout``."""
        self.exchange = exchange
        self._head.clear()
        self._responded = False
        self._body = None
        self.transport.write(data)  # type: ignore[union-attr]
        self._deadline = self._loop.time() + timeout
        if self._timer is None:  # one handle per connection, moved forward, not one per request
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        ex = self.exchange
        if ex is None or self._responded or self.closed:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        ex.timed_out(self)

    def start_tunnel(self, request: bytes) -> asyncio.Future[int]:
        """Send ``CONNECT``; the future gets the upstream's status (200: the tunnel is open)."""
        assert self.transport is not None
        self.handshake = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.handshake

    def _handshake_data(self, data: bytes) -> None:
        assert self.handshake is not None
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > self.server.gw.max_header_bytes:
                self.close()
                self.handshake.set_result(502)
            return
        try:
            status = http1.parse_response_head(bytes(self._head[: end + 4])).status
        except BadResponse:
            status = 502
        leftover = len(self._head) > end + 4
        self._head.clear()
        if leftover and status == 200:
            status = 502  # the upstream spoke before we did: not a clean tunnel
        if status != 200:
            self.close()
        self.handshake.set_result(status)
        self.handshake = None

    def data_received(self, data: bytes) -> None:
        if self.handshake is not None:
            self._handshake_data(data)
            return
        ex = self.exchange
        if ex is None:  # an idle connection the upstream talks on: not safe to reuse
            self.close()
            return
        try:
            out = b""
            if not self._responded:
                plain = None if self._head else fasthead.plain_response(data, ex.head.method)
                if plain is not None:
                    out = ex.plain_head(data, plain)
                    if plain.framing is _LENGTH and len(data) - plain.end == plain.length:
                        # the everyday answer: head and whole body in one read
                        self._responded = True
                        self._keep_alive = plain.keep_alive
                        ex.relay(out + data[plain.end :], plain.length)
                        self._finish(clean=True)
                        return
                    self._start_body(plain.framing, plain.length, plain.keep_alive)
                    data = data[plain.end :]
                else:
                    self._head += data
                    end = self._head.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self._head) > self.server.gw.max_header_bytes:
                            raise BadResponse("response head too large")
                        return
                    raw = bytes(self._head[: end + 4])
                    rest = bytes(self._head[end + 4 :])
                    resp = http1.parse_response_head(raw)
                    if 100 <= resp.status < 200 and resp.status != 101:
                        self._head = bytearray(rest)  # interim answer: wait for the real one
                        if rest:
                            self.data_received(b"")
                        return
                    framing = http1.response_body_framing(resp, ex.head.method)
                    self._start_body(framing.kind, framing.length, resp.keep_alive)
                    out = ex.response_head(resp, framing.kind)
                    data = rest
            assert self._body is not None
            used, done = self._body.feed(data)
            if used:
                body = data if used == len(data) else data[:used]
                ex.relay(out + body if out else body, len(body))
            elif out:
                ex.relay(out, 0)
            if done:
                self._finish(clean=used == len(data))
        except BadResponse as exc:
            self.close()
            ex.upstream_failed(
                self, UpstreamError(f"upstream sent a malformed answer: {exc.message}", "protocol_error", target=ex.target)
            )

    def _start_body(self, kind: http1.FramingKind, length: int, keep_alive: bool) -> None:
        self._responded = True
        self._keep_alive = keep_alive and kind is not http1.FramingKind.UNTIL_CLOSE
        self._body = http1.BodyTracker(kind, length)

    def _finish(self, clean: bool) -> None:
        ex, self.exchange = self.exchange, None
        assert ex is not None
        if clean and self._keep_alive and not self.server._closing:  # noqa: SLF001
            self.server.fast_pool.release(self.key, self)
        else:
            self.close()
        ex.done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_result(0)
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        if not self._responded:
            ex.upstream_lost(self)
        elif self._body is not None and self._body.kind is http1.FramingKind.UNTIL_CLOSE:
            ex.done()
        else:
            ex.cut_short()

    def pause_writing(self) -> None:  # our writes to the upstream are heads only
        pass

    def resume_writing(self) -> None:
        pass


class Exchange:
    """One request on the fast path, across attempts on several upstreams."""

    __slots__ = (
        "_attempts",
        "_fresh_retry",
        "_key",
        "_out",
        "admission",
        "client",
        "conn",
        "finished",
        "head",
        "keep",
        "proxy",
        "responded",
        "server",
        "started",
        "tried",
    )

    def __init__(self, client: ClientProtocol, head: http1.RequestHead, admission: Admission) -> None:
        self.client = client
        self.server = client.server
        self.head = head
        self.admission = admission
        self.tried: set[int] = set()
        self._attempts: Attempts | None = None  # made on the first failure only
        self.proxy: Proxy | None = None
        self.conn: UpstreamProtocol | None = None
        self.started = time.perf_counter()
        self.responded = False
        self.keep = False
        self.finished = False
        self._fresh_retry = False
        self._out = b""
        self._key: object = None

    @property
    def target(self) -> str:
        """``host:port`` of the request, for passive health (``UpstreamError(target=...)``)."""
        return f"{self.head.host}:{self.head.port}"

    # attempts -----------------------------------------------------------------------------
    @property
    def attempts(self) -> Attempts:
        if self._attempts is None:
            self._attempts = Attempts()
        return self._attempts

    def _attempt(self) -> None:
        server = self.server
        if len(self.tried) > server.gw.max_retries:
            self._refuse(self.attempts.refusal())
            return
        proxy = server.selector.pick(self.admission.route, exclude=self.tried, host=self.head.host)
        if proxy is None:
            if self.tried:
                self._refuse(self.attempts.refusal())
            elif server.gw.fallback == "direct":
                self.client.to_streams(self.head, self.admission)
            else:
                self._refuse(server._no_proxy(self.admission.route))  # noqa: SLF001
            return
        if proxy.protocol.is_socks:
            # tunnels through SOCKS are the stream path's job; it goes on with this pick
            self.client.to_streams(self.head, self.admission, Picked(proxy, self.tried, self.attempts))
            return
        self.tried.add(proxy.id)
        self.proxy = proxy
        self._use(proxy)

    def _use(self, proxy: Proxy) -> None:
        """Through a kept-alive tunnel to the target when the upstream allows it, else forwarded."""
        server = self.server
        head = self.head
        if proxy.id in server.no_tunnel:
            self._key = proxy.id
            extra = proxy_authorization(proxy.upstream)
            extra.append(("Connection", "keep-alive"))
            self._out = http1.forward_request_head(head, absolute=True, extra=extra)
        else:
            self._key = (proxy.id, head.host, head.port)
            self._out = head.origin_form or http1.forward_request_head(head, absolute=False, extra=_KEEP_ALIVE)
        conn = server.fast_pool.acquire(self._key)
        if conn is None:
            self._connect(proxy, fresh_retry=False)
        else:
            self.conn = conn
            conn.send(self, self._out, server.gw.response_timeout)

    def _connect(self, proxy: Proxy, fresh_retry: bool) -> None:
        self._fresh_retry = fresh_retry
        tunnel = None if isinstance(self._key, int) else (self.head.host, self.head.port)
        self.server.spawn_connect(self, proxy, self._key, tunnel)

    def no_tunnel(self, proxy: Proxy) -> None:
        """The upstream refused CONNECT to this port: remember it and forward instead."""
        self.server.no_tunnel.add(proxy.id)
        if not self.finished:
            self._use(proxy)

    def connected(self, conn: UpstreamProtocol) -> None:
        if self.finished:
            conn.close()
            return
        self._send(conn)

    def connect_failed(self, exc: UpstreamError) -> None:
        if self.finished:
            return
        self._failed(exc)

    def _send(self, conn: UpstreamProtocol) -> None:
        self.conn = conn
        conn.send(self, self._out, self.server.gw.response_timeout)

    def timed_out(self, conn: UpstreamProtocol) -> None:
        if self.finished:
            return
        conn.exchange = None
        conn.close()
        if self.responded:
            self.cut_short()
        else:
            self._failed(UpstreamTimeout("upstream did not answer in time", target=self.target))

    def _failed(self, exc: UpstreamError) -> None:
        self.conn = None
        self.attempts.failed(self.proxy, exc)
        self.server._report(self.proxy, False, exc)  # noqa: SLF001
        self._attempt()

    def upstream_failed(self, conn: UpstreamProtocol, exc: UpstreamError) -> None:
        if self.responded:
            self.cut_short()
        else:
            self._failed(exc)

    def upstream_lost(self, conn: UpstreamProtocol) -> None:
        """The upstream closed before answering: a stale pooled connection gets one fresh try."""
        if conn.uses > 0 and not self._fresh_retry and self.proxy is not None:
            self.conn = None
            self._connect(self.proxy, fresh_retry=True)
            return
        self._failed(UpstreamError("upstream closed the connection without answering", "reset", target=self.target))

    # the answer ---------------------------------------------------------------------------
    def response_head(self, resp: http1.ResponseHead, framing: http1.FramingKind) -> bytes:
        """The head for the client, rebuilt by the strict rules."""
        self.responded = True
        server = self.server
        self.keep = self.head.keep_alive and framing is not http1.FramingKind.UNTIL_CLOSE and not server._closing  # noqa: SLF001
        return http1.forward_response_head(resp, keep_alive=self.keep, extra=server._debug_headers(self.proxy))  # noqa: SLF001

    def plain_head(self, data: bytes, plain: fasthead.PlainResponse) -> bytes:
        """The head for the client, sliced from an everyday one (the same bytes ``response_head`` would build)."""
        self.responded = True
        server = self.server
        self.keep = keep = (
            self.head.keep_alive and plain.framing is not http1.FramingKind.UNTIL_CLOSE and not server._closing  # noqa: SLF001
        )
        ending = fasthead.KEEP_ALIVE if keep else fasthead.CLOSE
        if server.gw.debug_headers:
            extra = [f"{name}: {value}\r\n".encode("latin-1") for name, value in server._debug_headers(self.proxy)]  # noqa: SLF001
            ending = b"".join(extra) + ending
        if plain.cut_start == plain.fields_end:  # no Connection line to cut
            return data[: plain.fields_end] + ending
        return data[: plain.cut_start] + data[plain.cut_end : plain.fields_end] + ending

    def relay(self, data: bytes, body_bytes: int) -> None:
        self.client.write(data)
        on_bytes = self.server._on_bytes  # noqa: SLF001
        if on_bytes is not None and body_bytes:
            on_bytes("upstream_to_client", body_bytes)

    def done(self) -> None:
        if self.finished:
            return
        self.finished = True
        assert self.proxy is not None
        self.server.selector.report(self.proxy, True)  # passive health: a real success
        self.client.exchange_done(self, "ok", self.keep)

    def cut_short(self) -> None:
        """The answer broke after bytes went to the client: nothing to retry, close the client."""
        if self.finished:
            return
        self.finished = True
        cut = UpstreamError("upstream cut the answer short", "reset", target=self.target)
        self.server._report(self.proxy, False, cut)  # noqa: SLF001
        self.client.exchange_done(self, "upstream_error", False)

    def _refuse(self, refusal: Refusal) -> None:
        self.finished = True
        server = self.server
        server.refund_own_failure(self.admission, refusal)
        self.client.refuse(refusal, self.head)

    def abort(self) -> None:
        """The client went away."""
        if self.finished:
            return
        self.finished = True
        if self.conn is not None:
            self.conn.exchange = None
            self.conn.close()



class ClientProtocol(asyncio.Protocol):
    """A client connection while it is served by callbacks."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.exchange: Exchange | None = None
        self.peer = "?"
        self.first = True
        self.busy = False
        self.closed = False
        self.handed_over = False
        self.admitted = False
        self.done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._paused_upstream = False
        self._paused_reading = False

    # connection -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.done = self._loop.create_future()
        self.server.admit(self)

    def start(self) -> None:
        """Called once the server has a connection slot for us."""
        self.admitted = True
        self._arm(self.server.gw.head_timeout)
        if self.buffer:
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
        if self.closed or self.handed_over or self.busy:
            return
        if self._loop.time() < self._deadline:  # re-armed since: sleep again (one handle, not one per request)
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline
            return
        if self.first or self.buffer:
            self.write(http1.simple_response(408, "request head not received in time", close=True))
            self.server.count_refusal("?", Refusal(408, "", "timeout"), 0.0)
        self.close()

    def data_received(self, data: bytes) -> None:
        if not self.buffer and not self.busy and self.admitted:
            # the common case: exactly one whole head in this read, nothing before it
            end = data.find(b"\r\n\r\n")
            if end > 0 and end + 4 == len(data) <= self.server.gw.max_header_bytes:
                self._request(data)
                return
        self.buffer += data
        if self.busy or not self.admitted:
            if len(self.buffer) > self.server.gw.max_header_bytes * 2 and self.transport is not None:
                self.transport.pause_reading()  # a pipelining client waits for its previous answer
                self._paused_reading = True
            return
        if not self.first and len(self.buffer) == len(data):
            # the first bytes of a later head: from now on it has head_timeout, not idle_timeout (slowloris)
            self._arm(self.server.gw.head_timeout)
        self._try_head()

    def _try_head(self) -> None:
        buffer = self.buffer
        while buffer[:2] == b"\r\n":  # RFC 9112 2.2: ignore CRLF before a request line
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        limit = self.server.gw.max_header_bytes
        if end < 0 or end + 4 > limit:
            if len(buffer) > limit or end + 4 > limit:
                self._bad(BadRequest(431, f"request head larger than {limit} bytes"))
            return
        raw = bytes(buffer[: end + 4])
        del buffer[: end + 4]
        self._request(raw)

    def _request(self, raw: bytes) -> None:
        try:
            head = fasthead.plain_request(raw) or http1.parse_request_head(raw)
        except BadRequest as exc:
            self._bad(exc)
            return
        self.first = False
        self.busy = True
        self.server.fast_request(self, head)

    def _bad(self, exc: BadRequest) -> None:
        self.busy = True
        self.write(http1.simple_response(exc.status, exc.message, close=True))
        outcome = "headers_too_large" if exc.status == 431 else "bad_request"
        self.server.count_refusal("?", Refusal(exc.status, exc.message, outcome), 0.0)
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def begin(self, exchange: Exchange) -> None:
        self.exchange = exchange
        exchange._attempt()  # noqa: SLF001

    def refuse(self, refusal: Refusal, head: http1.RequestHead) -> None:
        keep = refusal.keeps(head)
        self.write(http1.simple_response(refusal.status, refusal.message, headers=refusal.headers, close=not keep))
        seconds = time.perf_counter() - self.exchange.started if self.exchange else 0.0
        self.server.count_refusal(head.method, refusal, seconds)
        self.exchange = None
        self._next(keep)

    def exchange_done(self, exchange: Exchange, outcome: str, keep: bool) -> None:
        self.exchange = None
        self.server.count_request(exchange.head.method, outcome, time.perf_counter() - exchange.started)
        self._next(keep)

    def _next(self, keep: bool) -> None:
        self.busy = False
        if not keep or self.server._closing:  # noqa: SLF001
            self.close()
            return
        self._arm(self.server.gw.idle_timeout)
        if self._paused_reading and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self._paused_reading = False
        if self.buffer:
            self._try_head()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.exchange is not None:
            self.exchange.abort()
            self.server.count_request(self.exchange.head.method, "client_closed", 0.0)
            self.exchange = None
        self.server.release(self)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # flow control: a slow client pauses the upstream that feeds it ---------------------------
    def pause_writing(self) -> None:
        conn = self.exchange.conn if self.exchange else None
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()
            self._paused_upstream = True

    def resume_writing(self) -> None:
        conn = self.exchange.conn if self.exchange else None
        if self._paused_upstream and conn is not None and conn.transport is not None and not conn.closed:
            conn.transport.resume_reading()
        self._paused_upstream = False

    # the way out ------------------------------------------------------------------------------
    def to_streams(self, head: http1.RequestHead, admission: Admission | None, picked: Picked | None = None) -> None:
        """Hand this connection to the stream path, ``head`` already read and admitted (None: the
        stream path admits it, awaiting the slow password check)."""
        assert self.transport is not None
        self.handed_over = True
        self.exchange = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.hand_over(self, head, bytes(self.buffer), admission, picked)
        self.buffer.clear()


def open_error(exc: BaseException, tls: bool = False) -> UpstreamError:
    """Map a failed ``create_connection`` the way ``gateway.proxy.upstream.open_forward`` does."""
    if tls:
        failed = tls_open_error(exc)
        if failed is not None:
            return failed
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("http upstream timed out")
    text = getattr(exc, "strerror", None) or str(exc)
    reason = "reset" if "reset" in str(exc).lower() else "refused"
    return UpstreamConnectError(f"http upstream unreachable: {str(text).lower()}", reason)
