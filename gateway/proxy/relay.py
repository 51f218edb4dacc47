"""Step 6 for a tunnel, relay: two transports wired to each other, half-close passed on, idle ones cut.

Once a CONNECT tunnel is up, the client's transport and the upstream's get small protocols
(``transport.set_protocol``): bytes go from one ``data_received`` straight into the other transport,
and a full write buffer on one side pauses reading on the other.  No coroutine runs at all (measured
in bench/gateway_bench.py: the stream pump this replaced spent its time in task wake-ups).  One timer
cuts the tunnel after ``idle_timeout`` without a byte either way (the client connection passes the
smaller of ``gateway.read_timeout`` and ``gateway.idle_timeout``: a silent tunnel is a stalled relay and
an idle client at once).  States are explicit (mitmproxy's ``TunnelState``) so ``repr()`` tells where a
tunnel is.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

__all__ = ["Tunnel", "TunnelState"]


class TunnelState(enum.Enum):
    OPEN = "open"
    HALF_CLOSED = "half-closed"  # one side sent EOF; the other may still talk
    CLOSED = "closed"


class _Half(asyncio.Protocol):
    """One side of the tunnel: what it receives goes to ``peer``."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, direction: str) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.direction = direction  # of the bytes this side receives
        self.peer: _Half | None = None
        self.eof = False
        self.lost = False
        # a TLS transport (an intercepted session's WebSocket) cannot stay half open: its close_notify ends it
        self.half_open = transport.get_extra_info("sslcontext") is None

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.last = tunnel.loop.time()
        n = len(data)
        if self.direction == "client_to_upstream":
            tunnel.sent += n
        else:
            tunnel.received += n
        if tunnel.on_bytes is not None:
            tunnel.on_bytes(self.direction, n)
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        # pass the EOF on: the other side may still answer (half-close)
        self.eof = True
        peer = self.peer
        if peer is not None and not peer.lost:
            try:
                if peer.transport.can_write_eof():
                    peer.transport.write_eof()
            except (OSError, RuntimeError):
                pass
        self.tunnel.half_closed()
        return self.half_open  # keep our side open for writing (a TLS transport: asyncio warns and closes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.close()

    def pause_writing(self) -> None:  # our transport is full: stop reading from the other side
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.resume_reading()


class Tunnel:
    """Relays client <-> upstream until both sides are done or the tunnel idles out; ``on_closed``
    hears of the end once."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        idle_timeout: float,
        on_bytes: Callable[[str, int], None] | None = None,
        on_closed: Callable[[Tunnel], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.on_bytes = on_bytes
        self.on_closed = on_closed
        self.state = TunnelState.OPEN
        self.sent = 0  # client -> upstream
        self.received = 0  # upstream -> client
        self.last = self.loop.time()
        self._client = _Half(self, client, "client_to_upstream")
        self._upstream = _Half(self, upstream, "upstream_to_client")
        self._client.peer, self._upstream.peer = self._upstream, self._client
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Tunnel {self.state.value} up={self.sent} down={self.received}>"

    def start(self, client_bytes: bytes = b"", upstream_bytes: bytes = b"") -> None:
        """Take both transports over; bytes either side sent early are passed on first."""
        for half, early in ((self._client, client_bytes), (self._upstream, upstream_bytes)):
            if half.transport.is_closing():
                half.lost = True
                continue
            half.transport.set_protocol(half)
            if early:
                half.data_received(early)
        if self._client.lost or self._upstream.lost:
            self.close()
            return
        for half in (self._client, self._upstream):
            half.transport.resume_reading()
        self._timer = self.loop.call_at(self.last + self.idle_timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state is TunnelState.CLOSED:
            return
        due = self.last + self.idle_timeout
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._on_timer)
            return
        self.close()

    def client_eof(self) -> None:
        """The client half-closed before the relay took its transport over: passed on as if it came now."""
        self._client.eof_received()

    def half_closed(self) -> None:
        if self.state is TunnelState.OPEN:
            self.state = TunnelState.HALF_CLOSED
        if (self._client.eof or self._client.lost) and (self._upstream.eof or self._upstream.lost):
            self.close()

    def close(self) -> None:
        if self.state is TunnelState.CLOSED:
            return
        self.state = TunnelState.CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for half in (self._client, self._upstream):
            half.transport.close()
        if self.on_closed is not None:
            self.on_closed(self)
