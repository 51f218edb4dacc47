"""The byte pump of a tunnel: both directions at once, half-close passed on, idle tunnels closed.

States are explicit (mitmproxy's ``TunnelState``) so ``repr()`` tells where a tunnel is.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

__all__ = ["Tunnel", "TunnelState"]

CHUNK = 1 << 16


class TunnelState(enum.Enum):
    OPEN = "open"
    HALF_CLOSED = "half-closed"  # one side sent EOF; the other may still talk
    CLOSED = "closed"


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
        self._last = 0.0

    def __repr__(self) -> str:
        return f"<Tunnel {self.state.value} up={self.sent} down={self.received}>"

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        on_bytes = self.on_bytes
        upward = direction == "client_to_upstream"
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                self._last = loop.time()
                writer.write(data)
                n = len(data)
                if upward:
                    self.sent += n
                else:
                    self.received += n
                if on_bytes is not None:
                    on_bytes(direction, n)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        # pass the EOF on: the peer may still answer (half-close)
        if self.state is TunnelState.OPEN:
            self.state = TunnelState.HALF_CLOSED
        try:
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            pass

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        (cr, cw), (ur, uw) = self.client, self.upstream
        up = loop.create_task(self._pump(cr, uw, "client_to_upstream"), name="tunnel-up")  # noqa: TID251
        down = loop.create_task(self._pump(ur, cw, "upstream_to_client"), name="tunnel-down")  # noqa: TID251
        pending = {up, down}
        try:
            while pending:
                remaining = self.idle_timeout - (loop.time() - self._last)
                if remaining <= 0:
                    break
                _, pending = await asyncio.wait(pending, timeout=remaining)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            self.state = TunnelState.CLOSED
            uw.close()
