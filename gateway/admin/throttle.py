"""Wrong admin tokens, counted per peer: after a few in a minute that peer waits, longer each time.

The admin token is compared in constant time, but nothing stopped a peer from trying tokens as fast as
it could (a configured ``admin.token`` may be short).  ``TokenThrottle`` counts the wrong ones each peer
address offers, as a bearer token on ``/api/*`` or in the dashboard's login form: ``limit`` (5) within
``window`` (60 s) and that peer's token checks are refused with 429 and ``Retry-After`` for ``backoff``
(60 s), doubled at every further lockout up to ``max_backoff`` (1 h).  While refused, what the peer offers
is not even compared, so a lucky guess is no better than a wrong one.  Other peers are never affected,
nor is a valid session cookie (it cannot be guessed, and an operator logged in from the address being
throttled keeps working).  A right token clears the peer's record.  The peer is the TCP peer address: a
reverse proxy in front of the admin makes every client one peer.  Memory is bounded (``keep`` peers,
the quietest forgotten first); nothing secret is kept or logged.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["TokenThrottle"]

log = logging.getLogger("proxy_pool.admin")


@dataclass
class _Peer:
    failures: list[float] = field(default_factory=list)  # within the window
    lockouts: int = 0
    refused_until: float = 0.0
    last: float = 0.0


class TokenThrottle:
    """Per-peer counts of wrong tokens and the lockouts they earned (see the module docstring)."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        backoff: float = 60.0,
        max_backoff: float = 3600.0,
        keep: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.keep = keep
        self.clock = clock
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def retry_after(self, peer: str) -> int | None:
        """Whole seconds until ``peer`` may offer a token again, or None when it may now."""
        record = self._peers.get(peer)
        if record is None:
            return None
        left = record.refused_until - self.clock()
        return math.ceil(left) if left > 0 else None

    def attempt(self, peer: str, given: str, token: str) -> tuple[bool, int | None]:
        """Check ``given`` against ``token`` for ``peer``: (matched, None), or (False, seconds to wait)
        while the peer is refused (``given`` is not compared then)."""
        wait = self.retry_after(peer)
        if wait is not None:
            return False, wait
        if hmac.compare_digest(given.encode(), token.encode()):
            self._peers.pop(peer, None)
            return True, None
        return False, self._failed(peer)

    def _failed(self, peer: str) -> int | None:
        now = self.clock()
        record = self._peers.pop(peer, None) or _Peer()
        self._peers[peer] = record  # the most recently active last
        record.last = now
        record.failures = [t for t in record.failures if now - t < self.window]
        record.failures.append(now)
        if len(record.failures) >= self.limit:
            record.failures.clear()
            record.lockouts += 1
            seconds = min(self.backoff * 2 ** (record.lockouts - 1), self.max_backoff)
            record.refused_until = now + seconds
            log.warning(
                "admin: %d wrong tokens from %s within %.0f s: its token checks are refused for %.0f s",
                self.limit, peer, self.window, seconds,
            )
        self._bound(now)
        left = record.refused_until - now
        return math.ceil(left) if left > 0 else None

    def _bound(self, now: float) -> None:
        """Forget peers quiet for longer than the longest lockout; past ``keep``, the quietest."""
        quiet = self.max_backoff + self.window
        while self._peers:
            oldest = next(iter(self._peers.values()))
            if len(self._peers) <= self.keep and now - oldest.last < quiet:
                break
            self._peers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._peers)
