"""Dashboard sessions: the login cookie, signed with a key derived from the admin token.

A cookie is ``v1.SID.EXPIRES.MAC``: a random session id, its end (Unix seconds) and an HMAC-SHA256 of both
under ``HMAC(admin token, "proxy-pool dashboard session v1")``.  So:

- nobody makes one without the token, and a client cannot choose its id (no session fixation: the login
  always issues a new one, whatever cookie came with it);
- it stops working the moment the admin token changes (another key);
- every process that shares the token accepts it: the workers of ``serve --workers N`` behind one admin port,
  replicas with the same ``admin.token``; a gateway restart keeps the operator logged in;
- the token itself is never in the browser, and the MAC is compared in constant time.

Logout ends the session on the process that served it (a bounded in-memory list of ended ids, kept until
they would have expired anyway); the browser drops the cookie too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from aiohttp import web

__all__ = ["COOKIE", "SESSIONS", "SESSION_SECONDS", "Sessions"]

COOKIE = "proxy_pool_session"
SESSION_SECONDS = 12 * 3600
_VERSION = "v1"
_KEY_LABEL = b"proxy-pool dashboard session v1"


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _mac(token: str, sid: str, expires: int) -> str:
    digest = hmac.new(_key(token), f"{_VERSION}.{sid}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Sessions:
    """Issues and verifies session cookies; remembers the ids logged out here (at most ``keep``)."""

    def __init__(self, seconds: int = SESSION_SECONDS, keep: int = 10_000) -> None:
        self.seconds = seconds
        self.keep = keep
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
        parsed = self._parse(cookie, token)
        return parsed is not None and parsed[0] not in self._ended

    def end(self, cookie: str | None, token: str) -> None:
        """Logout: a genuine cookie's id is refused from now on (forged ones are not remembered)."""
        parsed = self._parse(cookie, token)
        if parsed is None:
            return
        now = time.time()
        if len(self._ended) >= self.keep:
            self._ended = {sid: end for sid, end in self._ended.items() if end > now}
            while len(self._ended) >= self.keep:  # still full: the one nearest its end goes first
                self._ended.pop(min(self._ended, key=self._ended.__getitem__))
        self._ended[parsed[0]] = parsed[1]


SESSIONS = web.AppKey("sessions", Sessions)
