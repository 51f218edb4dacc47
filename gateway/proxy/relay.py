"""The byte pump of a tunnel: both directions at once, half-close passed on, idle tunnels closed.

Once a tunnel is up, the two transports are wired to each other with small protocols: bytes go
from one ``data_received`` straight into the other transport, and a full write buffer on one side
pauses reading on the other.  No coroutine runs per chunk (measured in bench/gateway_bench.py (c):
the stream pump this replaced spent its time in task wake-ups, not in copying).  States are
explicit (mitmproxy's ``TunnelState``) so ``repr()`` tells where a tunnel is.
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

    def __init__(self, tunnel: Tunnel, direction: str) -> None:
        self.tunnel = tunnel
        self.direction = direction  # of the bytes this side receives
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False
        self.lost = False

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
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        # pass the EOF on: the other side may still answer (half-close)
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            try:
                if peer.transport.can_write_eof():
                    peer.transport.write_eof()
            except (OSError, RuntimeError):
                pass
        self.tunnel.half_closed()
        return True  # keep our side open for writing

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.side_lost()

    def pause_writing(self) -> None:  # our transport is full: stop reading from the other side
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.lost:
            peer.transport.resume_reading()


class Tunnel:
    """Relays client <-> upstream until both sides are done or the tunnel idles out."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        *,
        idle_timeout: float,
        on_bytes: Callable[[str, int], None] | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.on_bytes = on_bytes
        self.state = TunnelState.OPEN
        self.sent = 0  # client -> upstream
        self.received = 0  # upstream -> client
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self._done: asyncio.Future[None] = self.loop.create_future()
        self._halves: list[_Half] = []

    def __repr__(self) -> str:
        return f"<Tunnel {self.state.value} up={self.sent} down={self.received}>"

    def half_closed(self) -> None:
        if self.state is TunnelState.OPEN:
            self.state = TunnelState.HALF_CLOSED
        if all(h.eof or h.lost for h in self._halves):
            self._finish()

    def side_lost(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    async def run(self) -> None:
        (cr, cw), (ur, uw) = self.client, self.upstream
        client_half = _Half(self, "client_to_upstream")
        up_half = _Half(self, "upstream_to_client")
        client_half.peer, up_half.peer = up_half, client_half
        self._halves = [client_half, up_half]
        sides = ((client_half, cr, cw), (up_half, ur, uw))
        for half, _, writer in sides:
            half.transport = writer.transport  # type: ignore[assignment]
        for half, reader, writer in sides:
            buffered = bytes(reader._buffer)  # noqa: SLF001  (bytes the stream read ahead)
            reader._buffer.clear()  # noqa: SLF001
            writer.transport.set_protocol(half)
            if buffered:
                half.data_received(buffered)
            if reader.at_eof():  # the EOF arrived before the swap: pass it on now
                half.eof_received()
            if reader.exception() is not None or writer.transport.is_closing():
                half.lost = True  # reset or closed before the swap (e.g. while the upstream was dialed)
                self._finish()
        for half in self._halves:
            if half.transport is not None and not half.transport.is_closing():
                half.transport.resume_reading()
        try:
            while not self._done.done():
                remaining = self.idle_timeout - (self.loop.time() - self.last)
                if remaining <= 0:
                    break
                await asyncio.wait({self._done}, timeout=remaining)
        finally:
            self.state = TunnelState.CLOSED
            for half in self._halves:
                if half.transport is not None:
                    half.transport.close()
