"""Dashboard sessions: the login cookie, signed with a key derived from the admin token.

A cookie is ``v1.SID.EXPIRES.MAC``: a random session id, its end (Unix seconds) and an HMAC-SHA256 of both
under ``HMAC(admin token, "proxy-pool dashboard session v1")``.  So:

- nobody makes one without the token, and a client cannot choose its id (no session fixation: the login
  always issues a new one, whatever cookie came with it);
- it stops working the moment the admin token changes (another key);
- every process that shares the token accepts it: the workers of ``serve --workers N`` behind one admin port,
  replicas with the same ``admin.token``; a gateway restart keeps the operator logged in;
- the token itself is never in the browser, and the MAC is compared in constant time.

Logout ends the session everywhere: its id is recorded in the shared store (a ``pool_marks`` row named
``dashboard-session-ended:SID``, at the cookie's end), which every worker and replica on that database
reads when a cookie comes with an admin request (never on the proxy path), and in a bounded in-memory
list here, so the process that saw the logout, or learnt of it once, asks no more; the browser drops the
cookie too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Protocol

from aiohttp import web

__all__ = ["COOKIE", "SESSIONS", "SESSION_SECONDS", "Sessions"]

COOKIE = "proxy_pool_session"
SESSION_SECONDS = 12 * 3600
_VERSION = "v1"
_KEY_LABEL = b"proxy-pool dashboard session v1"
_ENDED_MARK = "dashboard-session-ended:"

log = logging.getLogger("proxy_pool.admin")


class MarkStore(Protocol):
    """The part of ``pool.store.Store`` that sessions use (shared by every worker and replica)."""

    async def get_mark(self, name: str) -> datetime | None: ...
    async def claim_mark(self, name: str, last: datetime | None, at: datetime) -> bool: ...


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _mac(token: str, sid: str, expires: int) -> str:
    digest = hmac.new(_key(token), f"{_VERSION}.{sid}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Sessions:
    """Issues and verifies session cookies; remembers the ids logged out here (at most ``keep``)."""

    def __init__(self, seconds: int = SESSION_SECONDS, keep: int = 10_000, store: MarkStore | None = None) -> None:
        self.seconds = seconds
        self.keep = keep
        self.store = store  # where logouts are shared with the other workers and replicas
        self._ended: dict[str, int] = {}  # sid -> when it would have expired

    def issue(self, token: str) -> str:
        sid = secrets.token_urlsafe(24)
        expires = int(time.time()) + self.seconds
        return f"{_VERSION}.{sid}.{expires}.{_mac(token, sid, expires)}"

    def _parse(self, cookie: str | None, token: str) -> tuple[str, int] | None:
        """(sid, expires) of a genuine, unexpired cookie; None for anything else."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdigit():
            return None
        _, sid, expires_text, mac = parts
        expires = int(expires_text)
        if not hmac.compare_digest(mac.encode(), _mac(token, sid, expires).encode()):
            return None
        if expires <= time.time():
            return None
        return sid, expires

    def valid(self, cookie: str | None, token: str) -> bool:
        """Genuine, unexpired and not logged out as far as this process knows (see ``alive``)."""
        parsed = self._parse(cookie, token)
        return parsed is not None and parsed[0] not in self._ended

    async def alive(self, cookie: str | None, token: str) -> bool:
        """``valid``, and not logged out on any process sharing the store (one read of it)."""
        parsed = self._parse(cookie, token)
        if parsed is None or parsed[0] in self._ended:
            return False
        if self.store is None:
            return True
        try:
            ended = await self.store.get_mark(_ENDED_MARK + parsed[0])
        except Exception as exc:  # the database is out of reach: no session can be vouched for
            log.warning("dashboard session not checked, the database is unreachable: %s", type(exc).__name__)
            return False
        if ended is not None:
            self._remember(*parsed)
            return False
        return True

    async def end(self, cookie: str | None, token: str) -> None:
        """Logout: a genuine cookie's id is refused from now on, here at once and by every process sharing
        the store (forged ones are not remembered).  Raises when the store cannot record it."""
        parsed = self._parse(cookie, token)
        if parsed is None:
            return
        self._remember(*parsed)
        if self.store is not None:
            sid, expires = parsed
            await self.store.claim_mark(_ENDED_MARK + sid, None, datetime.fromtimestamp(expires, UTC))

    def _remember(self, sid: str, expires: int) -> None:
        now = time.time()
        if len(self._ended) >= self.keep:
            self._ended = {k: end for k, end in self._ended.items() if end > now}
            while len(self._ended) >= self.keep:  # still full: the one nearest its end goes first
                self._ended.pop(min(self._ended, key=self._ended.__getitem__))
        self._ended[sid] = expires


SESSIONS = web.AppKey("sessions", Sessions)
