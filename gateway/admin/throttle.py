"""Wrong admin tokens, counted per peer and in all: past a budget, wrong guesses are slowed down.

The admin token is compared in constant time, but nothing stopped a peer from trying tokens as fast as
it could (a configured ``admin.token`` may be short).  ``TokenThrottle`` counts the wrong ones each peer
address offers, as a bearer token on ``/api/*`` or in the dashboard's login form: ``limit`` (5) within
``window`` (60 s) and that peer's wrong tokens are answered 429 with ``Retry-After`` for ``backoff``
(60 s), doubled at every further lockout up to ``max_backoff`` (1 h).  All peers together share a
budget too: past ``global_limit`` (100) wrong tokens within ``window``, every wrong token is answered
429 until the window has room (many loopback addresses are one attacker).  A refused wrong token's
answer is held ``hold`` seconds, ``held_at_once`` at a time in all (``TokenThrottle.held``), so a guesser
learns "wrong" a few times a second at most, however many connections it opens.

The right token always works: it is always compared and never held nor refused, so a local process
guessing from the operator's address (every local process is 127.0.0.1) cannot lock the operator
out.  A right token clears the peer's record; a valid session cookie is never throttled.  The peer is
the TCP peer address: a reverse proxy in front of the admin makes every client one peer.  Memory is
bounded (``keep`` peers, the quietest forgotten first); nothing secret is kept or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
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
        global_limit: int = 100,
        hold: float = 1.0,
        held_at_once: int = 8,
    ) -> None:
        self.limit = limit
        self.window = window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.keep = keep
        self.clock = clock
        self.global_limit = global_limit
        self.hold = hold
        self.held_at_once = held_at_once
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._recent: deque[float] = deque()  # the last ``global_limit`` wrong tokens of all peers
        self._holding: asyncio.Semaphore | None = None
        self._global_warned = False

    def retry_after(self, peer: str) -> int | None:
        """Whole seconds until a wrong token from ``peer`` is answered 401 again, or None when it is now."""
        now = self.clock()
        left = 0.0
        record = self._peers.get(peer)
        if record is not None:
            left = record.refused_until - now
        if len(self._recent) >= self.global_limit:
            left = max(left, self._recent[0] + self.window - now)
        return math.ceil(left) if left > 0 else None

    def attempt(self, peer: str, given: str, token: str) -> tuple[bool, int | None]:
        """Check ``given`` against ``token`` for ``peer`` (always compared): (True, None) for the right
        token, whatever came before; (False, None) for a wrong one; (False, seconds) for a wrong one
        while the peer, or every peer, is over its budget (answer it 429, held: ``held``)."""
        if hmac.compare_digest(given.encode(), token.encode()):
            self._peers.pop(peer, None)
            return True, None
        self._failed(peer)
        return False, self.retry_after(peer)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold a refused wrong token's answer ``hold`` seconds, ``held_at_once`` at a time in all."""
        if self._holding is None:
            self._holding = asyncio.Semaphore(self.held_at_once)
        async with self._holding:
            await asyncio.sleep(self.hold)
            yield

    def _failed(self, peer: str) -> None:
        now = self.clock()
        self._recent.append(now)
        while len(self._recent) > self.global_limit:
            self._recent.popleft()
        if len(self._recent) >= self.global_limit and now - self._recent[0] < self.window:
            if not self._global_warned:
                self._global_warned = True
                log.warning(
                    "admin: %d wrong tokens within %.0f s from all addresses: wrong tokens are answered 429",
                    self.global_limit, self.window,
                )
        else:
            self._global_warned = False
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
                "admin: %d wrong tokens from %s within %.0f s: its wrong tokens are refused for %.0f s",
                self.limit, peer, self.window, seconds,
            )
        self._bound(now)

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
