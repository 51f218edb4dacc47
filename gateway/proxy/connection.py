"""One upstream connection and the one pool that keeps them: explicit states, httpcore style.

A connection goes NEW (dialing, a CONNECT handshake) -> ACTIVE (carrying one request) -> IDLE (in the
pool) -> ACTIVE ... -> CLOSED.  It is keyed by ``(upstream id or None for direct, target host, port)``:
many proxies (pproxy among them) tie a kept-alive connection to the first target it carried, so a
connection never serves another target.  A connection whose answer did not end exactly at its
framing, that holds bytes nobody asked for, or that spoke while idle is closed, never reused.

The connection parses the answer's head and finds where its body ends; what to do with the bytes is
the business of its ``Receiver`` (the exchange in ``gateway.proxy.exchange``).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from typing import Protocol

from gateway.proxy import fasthead, http1
from gateway.proxy.errors import BadResponse

__all__ = ["SNIFF", "SNIFF_MAX", "ConnState", "ConnectionPool", "Receiver", "UpstreamConnection"]

# what ``Receiver.response_head`` returns to have the whole body read first (a ban rule's
# body_contains): the connection buffers it, at most ``SNIFF_MAX`` bytes, then asks
# ``Receiver.sniffed``.  Compared by identity: no head is ever this object.
SNIFF = bytes(1)
SNIFF_MAX = 64 * 1024  # bytes of a body read whole at most; a longer answer goes on as it is

_LENGTH = http1.FramingKind.LENGTH
_UNTIL_CLOSE = http1.FramingKind.UNTIL_CLOSE


class ConnState(enum.Enum):
    NEW = "new"  # dialed, not yet carrying a request (or in its CONNECT handshake)
    ACTIVE = "active"  # a request was sent; its answer is being read
    IDLE = "idle"  # in the pool, between requests
    CLOSED = "closed"


# module-level names for the hot path: a global is read faster than an enum member through its class
_NEW, _ACTIVE, _IDLE, _CLOSED = ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED


class Receiver(Protocol):
    """What a connection tells the request it carries (``gateway.proxy.exchange.Exchange``)."""

    def plain_head(self, data: bytes, plain: fasthead.PlainResponse) -> bytes | None: ...  # None: parse it fully
    def response_head(self, resp: http1.ResponseHead, framing: http1.FramingKind) -> bytes | None: ...  # None: hold it
    def sniffed(self, body: bytes, whole: bool) -> bytes | None: ...  # after SNIFF: the head, or None (a ban)
    def relay(self, data: bytes, body_bytes: int) -> None: ...
    def done(self) -> None: ...
    def cut_short(self) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection) -> None: ...
    def upstream_failed(self, conn: UpstreamConnection, message: str) -> None: ...
    def timed_out(self, conn: UpstreamConnection) -> None: ...
    def writable(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """A connection to an upstream (or, direct, to the target) carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: object, max_head: int, pool: ConnectionPool) -> None:
        self.loop = loop
        self.key = key
        self.max_head = max_head
        self.pool = pool
        self.state = _NEW
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self.uses = 0
        self.idle_since = time.monotonic()
        self.method = "GET"
        self.dechunk: list[bytes] | None = None  # HTTP/1.0 client: the chunk data goes out, not the framing
        self.write_paused = False
        self.request_sent = True  # False while a request body is still going out
        self._answered = False  # the answer ended while the request body was still going out
        self._head = bytearray()
        self._responded = False
        self._keep_alive = False
        self._body: http1.BodyTracker | None = None
        self._parked: bytes | None = None  # an answer held back (a ban) until someone wants it
        self._sniff: bytearray | None = None  # a body read whole before its head goes anywhere (SNIFF)
        self.handshake: asyncio.Future[int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._timer_at = 0.0
        self.read_timeout = 30.0
        self.holder: Holder | None = None  # a SOCKS session keeping it between its requests (gateway.proxy.fixed)
        self.early = b""  # a client's tunnel: what the target said before anyone took the connection over
        self._early_ok = False

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.key!r} {self.state.name} uses={self.uses}>"

    # the pool's view -----------------------------------------------------------------------
    def is_available(self, now: float) -> bool:
        return self.state is _IDLE and now - self.idle_since < self.pool.idle_timeout

    @property
    def is_open(self) -> bool:
        return self.state is not ConnState.CLOSED and self.transport is not None and not self.transport.is_closing()

    def detach(self) -> None:
        """Handed to a raw relay (``gateway.proxy.relay``), which takes the transport over: this
        connection never carries a request or goes to the pool again."""
        self.state = ConnState.CLOSED
        self.receiver = None
        self.holder = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self.state is not _CLOSED:
            self.state = _CLOSED
            if self.transport is not None:
                self.transport.close()
        self.receiver = None

    # protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, receiver: Receiver, method: str, data: bytes, timeout: float, read_timeout: float) -> None:
        """Write a request head (its body, if any, follows through ``write``); answers go to ``receiver``."""
        self.state = _ACTIVE
        self.receiver = receiver
        self.method = method
        self.read_timeout = read_timeout
        self._answered = False
        self._head.clear()
        self._responded = False
        self._body = None
        self._sniff = None
        self.transport.write(data)  # type: ignore[union-attr]
        self._arm(timeout)

    def write(self, data: bytes) -> None:
        if self.state is not _CLOSED and self.transport is not None:
            self.transport.write(data)

    def wait_answer(self, timeout: float) -> None:
        """The whole request is out: the answer's head has ``timeout`` from now (or, when the answer
        came first, the connection is free: pooled only now, its request and answer both complete)."""
        self.request_sent = True
        if self._answered:
            self._answered = False
            self.pool.release(self)
        elif not self._responded:
            self._arm(timeout, force=True)

    def _arm(self, seconds: float, force: bool = False) -> None:
        # one handle per connection: moved later by a re-check when it fires, moved sooner when needed
        self._deadline = deadline = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
        elif force or deadline < self._timer_at:
            self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        receiver = self.receiver
        if receiver is None or self.state is not _ACTIVE:
            return
        if self.loop.time() < self._deadline:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline
            return
        receiver.timed_out(self)

    def start_tunnel(self, request: bytes, early_ok: bool = False) -> asyncio.Future[int]:
        """Send ``CONNECT``; the future gets the upstream's status (200: the tunnel is open, 0: it closed).
        ``early_ok``: a client's own tunnel, where a target that speaks first (SMTP, SSH) is no fault:
        its bytes wait in ``early`` for the relay; else they make the tunnel unclean (502)."""
        assert self.transport is not None
        self._early_ok = early_ok
        self.handshake = self.loop.create_future()
        self.transport.write(request)
        return self.handshake

    def _handshake_data(self, data: bytes) -> None:
        assert self.handshake is not None
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > self.max_head:
                self.close()
                self.handshake.set_result(502)
                self.handshake = None
            return
        try:
            status = http1.parse_response_head(bytes(self._head[: end + 4])).status
        except BadResponse:
            status = 502
        leftover = bytes(self._head[end + 4 :])
        self._head.clear()
        if leftover and status == 200:
            if self._early_ok:
                self.early = leftover
            else:
                status = 502  # the upstream spoke before we did: not a clean tunnel
        if status != 200:
            self.close()
        self.handshake.set_result(status)
        self.handshake = None

    def data_received(self, data: bytes) -> None:
        if self.handshake is not None:
            self._handshake_data(data)
            return
        receiver = self.receiver
        if receiver is None or self.state is not _ACTIVE:  # spoke unasked: never reused
            holder = self.holder
            if holder is not None and receiver is None and self.state is not ConnState.CLOSED:
                holder.spoke(self, data)  # a SOCKS session's target speaking first: its raw relay
                return
            if self._early_ok and self.state is ConnState.NEW:  # a client's tunnel, not taken over yet
                self.early += data
                return
            self.close()
            return
        if self._responded:
            self._deadline = self.loop.time() + self.read_timeout
        try:
            if self._sniff is not None:
                self._sniff_bytes(receiver, data)
                return
            out = b""
            if not self._responded:
                plain = None if self._head or self.dechunk is not None else fasthead.plain_response(data, self.method)
                if plain is not None:
                    head = receiver.plain_head(data, plain)
                    if head is None:  # wanted in full (a ban answer): parsed below
                        plain = None
                    else:
                        _, framing, length, keep_alive, _, _, _, end = plain
                        if framing is _LENGTH and len(data) - end == length:
                            # the everyday answer: head and whole body in one read (no tracker, no timer)
                            self._responded = True
                            self._keep_alive = keep_alive
                            receiver.relay(head + data[end:], length)
                            self._finish(clean=True)
                            return
                        out = head
                        self._start_body(framing, length, keep_alive)
                        data = data[end:]
                if plain is None:
                    self._head += data
                    end = self._head.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self._head) > self.max_head:
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
                    self._head.clear()
                    framing = http1.response_body_framing(resp, self.method)
                    head = receiver.response_head(resp, framing.kind)
                    if head is None:  # held back (a ban answer): kept for later, unread
                        self._park(framing.kind, framing.length, resp.keep_alive, rest)
                        return
                    if head is SNIFF:  # the body decides whether it is a ban: read it first
                        self._start_body(framing.kind, framing.length, resp.keep_alive)
                        self._sniff = bytearray()
                        self._sniff_bytes(receiver, rest)
                        return
                    out = head
                    self._start_body(framing.kind, framing.length, resp.keep_alive)
                    data = rest
            self._body_bytes(receiver, out, data)
        except BadResponse as exc:
            self.close()
            receiver.upstream_failed(self, f"upstream sent a malformed answer: {exc.message}")

    def _body_bytes(self, receiver: Receiver, out: bytes, data: bytes) -> None:
        body = self._body
        assert body is not None
        collect = self.dechunk
        used, done = body.feed(data, collect=collect)
        if collect is not None:
            piece = b"".join(collect)
            collect.clear()
            if piece or out:
                receiver.relay(out + piece, len(piece))
        elif used:
            chunk = data if used == len(data) else data[:used]
            receiver.relay(out + chunk if out else chunk, len(chunk))
        elif out:
            receiver.relay(out, 0)
        if done:
            self._finish(clean=used == len(data))

    def _sniff_bytes(self, receiver: Receiver, data: bytes) -> None:
        """Body bytes of an answer being read whole (SNIFF): kept until it ends or passes ``SNIFF_MAX``;
        then the receiver says whether it goes on (its head first) or was a ban (nothing goes on, and the
        connection, its answer read exactly, is free for the pool)."""
        body = self._body
        buf = self._sniff
        assert body is not None and buf is not None
        used, done = body.feed(data)
        buf += data if used == len(data) else data[:used]
        if not done and len(buf) <= SNIFF_MAX:
            return
        self._sniff = None
        whole = bytes(buf)
        out = receiver.sniffed(whole, done)
        if out is None:  # a ban: the receiver has moved on
            self.receiver = None
            if done and used == len(data) and self._keep_alive and self.request_sent and self.dechunk is None:
                self.pool.release(self)
            else:
                self.close()
            return
        receiver.relay(out + whole, len(whole))
        if done:
            self._finish(clean=used == len(data))

    def _park(self, kind: http1.FramingKind, length: int, keep_alive: bool, data: bytes) -> None:
        self._start_body(kind, length, keep_alive)
        self._parked = data
        self.receiver = None  # nobody listens until unpark(); reading stays paused meanwhile
        if self.transport is not None and self.state is not _CLOSED:
            self.transport.pause_reading()

    def unpark(self, receiver: Receiver, out: bytes) -> None:
        """Pass a held-back answer on after all: its head ``out``, then its body as it comes."""
        self.receiver = receiver
        data, self._parked = self._parked or b"", None
        lost = self.state is _CLOSED
        if not lost and self.transport is not None:
            self.transport.resume_reading()
        self._arm(self.read_timeout, force=True)
        try:
            self._body_bytes(receiver, out, data)
        except BadResponse as exc:
            self.close()
            receiver.upstream_failed(self, f"upstream sent a malformed answer: {exc.message}")
            return
        if lost and self.receiver is not None:  # it closed while held: what came is all there is
            self.receiver = None
            if self._body is not None and self._body.kind is _UNTIL_CLOSE:
                receiver.done()
            else:
                receiver.cut_short()

    def _start_body(self, kind: http1.FramingKind, length: int, keep_alive: bool) -> None:
        self._responded = True
        self._keep_alive = keep_alive and kind is not _UNTIL_CLOSE
        self._body = http1.BodyTracker(kind, length)
        self._arm(self.read_timeout)  # from the head on, the body may not stall longer than read_timeout

    def _finish(self, clean: bool) -> None:
        receiver, self.receiver = self.receiver, None
        assert receiver is not None
        if not (clean and self._keep_alive and self.dechunk is None):
            self.close()
        elif self.request_sent:
            self.pool.release(self)
        else:
            self._answered = True  # the rest of the request body still goes out on it first
        receiver.done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_result(0)
        receiver, self.receiver = self.receiver, None
        if receiver is None:
            if self.holder is not None:
                self.holder.lost(self)
            return
        if self._sniff is not None:  # closed while its body was being read whole: nothing went on yet
            whole, self._sniff = bytes(self._sniff), None
            if self._body is not None and self._body.kind is _UNTIL_CLOSE:
                out = receiver.sniffed(whole, True)  # the close ended it
                if out is not None:
                    receiver.relay(out + whole, len(whole))
                    receiver.done()
            else:
                receiver.upstream_lost(self)
        elif not self._responded:
            receiver.upstream_lost(self)
        elif self._body is not None and self._body.kind is _UNTIL_CLOSE:
            receiver.done()
        else:
            receiver.cut_short()

    # flow control: a request body goes no faster than the upstream takes it --------------------
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.receiver is not None:
            self.receiver.writable()


class Holder(Protocol):
    """Who keeps a connection between its requests instead of the pool (``gateway.proxy.fixed.FixedTarget``)."""

    def spoke(self, conn: UpstreamConnection, data: bytes) -> None: ...
    def lost(self, conn: UpstreamConnection) -> None: ...


class ConnectionPool:
    """Idle connections per key; bookkeeping is synchronous, closing is the transport's business
    (httpcore's pool decides first and does I/O afterwards)."""

    def __init__(self, per_key: int = 32, idle_timeout: float = 30.0, max_total: int = 4096) -> None:
        self.per_key = per_key
        self.idle_timeout = idle_timeout
        self.max_total = max_total  # idle sockets held at most, whatever the number of keys
        self._idle: OrderedDict[object, list[UpstreamConnection]] = OrderedDict()
        self._total = 0

    def acquire(self, key: object) -> UpstreamConnection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        now = time.monotonic()
        found = None
        idle_timeout = self.idle_timeout
        while conns:
            conn = conns.pop()
            self._total -= 1
            if conn.state is _IDLE and now - conn.idle_since < idle_timeout:  # conn.is_available(now)
                found = conn
                break
            conn.close()
        if not conns:
            del self._idle[key]
        return found

    def release(self, conn: UpstreamConnection) -> None:
        """Back to the pool, IDLE: only a connection whose answer ended exactly at its framing.  A held
        one (``conn.holder``) goes IDLE but stays with its holder until ``give_back``."""
        if conn.state is not ConnState.ACTIVE or (self.per_key == 0 and conn.holder is None):
            conn.close()
            return
        conn.state = _IDLE
        conn.receiver = None
        conn.uses += 1
        conn.idle_since = time.monotonic()
        if conn.holder is None:
            self._keep(conn)

    def give_back(self, conn: UpstreamConnection) -> None:
        """A holder is done with ``conn``: into the pool if it is IDLE and open (a clean message
        boundary, and taken from the pool or fresh: NEW), else closed."""
        conn.holder = None
        if conn.state is ConnState.NEW and conn.is_open and not conn.uses and conn.handshake is None and not conn.early:
            conn.state = ConnState.ACTIVE  # a fresh tunnel that carried nothing: as good as an idle one
            self.release(conn)
            return
        if self.per_key == 0 or conn.state is not ConnState.IDLE or not conn.is_open:
            conn.close()
            return
        self._keep(conn)  # idle since its last answer ended

    def _keep(self, conn: UpstreamConnection) -> None:
        conns = self._idle.setdefault(conn.key, [])
        self._idle.move_to_end(conn.key)
        conns.append(conn)
        self._total += 1
        if len(conns) > self.per_key:
            conns.pop(0).close()
            self._total -= 1
        while self._total > self.max_total:
            oldest_key = next(iter(self._idle))
            oldest = self._idle[oldest_key]
            oldest.pop(0).close()
            self._total -= 1
            if not oldest:
                del self._idle[oldest_key]

    def prune(self) -> int:
        """Close connections idle too long or closed meanwhile; how many went (a background loop)."""
        now = time.monotonic()
        closed = 0
        for key in list(self._idle):
            conns = self._idle[key]
            keep = [c for c in conns if c.is_available(now)]
            for c in conns:
                if c not in keep:
                    c.close()
                    closed += 1
            self._total -= len(conns) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._total = 0

    def __len__(self) -> int:
        return self._total
