"""Who may use the admin API: the bearer token, the ``Host`` rule (DNS rebinding) and the CSRF rules.

Order of the checks, each answering with its own status and a one-line JSON error:

1. 421 when ``Host`` names neither a loopback name or address, the listen address nor one of
   ``admin.allowed_hosts``: a web page whose name was rebound to 127.0.0.1 sends its own name.
2. 403 when a state-changing request (POST, PUT, PATCH, DELETE) carries an ``Origin`` that is not the
   admin's own (a request without ``Origin``, from curl or the CLI, is fine).
3. 401 on ``/api/*`` unless ``admin_authorized``; 429 with ``Retry-After`` for a wrong bearer token from a
   peer that offered too many (or when all peers did), held a moment (``gateway.admin.throttle``); the
   right token always passes.  The token is wanted from everyone, loopback included,
   because an upstream on this host reaches loopback under names the gateway cannot check.  The
   dashboard's session cookie (``gateway.admin.sessions``) stands for the token only on a request from the
   admin's own origin: cookies are per host, not per port, and SameSite=Strict lets every page of the same
   site (another port of 127.0.0.1) send them, so a request whose ``Origin`` or ``Sec-Fetch-Site`` says it
   came from elsewhere is not the operator's, even for a GET.
4. 415 when a state-changing request has a body that is not ``application/json`` (HTML forms cannot send it).

``/healthz``, ``/metrics``, ``/judge``, ``/proxy.pac``, ``/wpad.dat`` and ``/ca.pem`` carry no secret and are read by
machines under whatever name they know the admin by (Prometheus: the compose service name), so none of
these rules applies to them.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from aiohttp import web

from config import Settings
from gateway.admin.common import POOL
from gateway.admin.sessions import COOKIE, SESSIONS
from gateway.admin.throttle import TokenThrottle

__all__ = [
    "THROTTLE",
    "TOKEN",
    "UNGUARDED_PATHS",
    "admin_authorized",
    "guard_middleware",
    "host_allowed",
    "session_authorized",
    "token_attempt",
    "too_many_attempts",
]

TOKEN = web.AppKey("admin_token", str)
THROTTLE = web.AppKey("token_throttle", TokenThrottle)
UNGUARDED_PATHS = frozenset({"/healthz", "/metrics", "/judge", "/proxy.pac", "/wpad.dat", "/ca.pem"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


async def admin_authorized(request: web.Request) -> bool | int:
    """True when the request proves it is the operator: ``Authorization: Bearer TOKEN``, or the dashboard's
    session cookie on a request from the admin's own origin; an int: seconds this peer must wait before
    its bearer token is looked at again."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        matched, wait = await token_attempt(request, given.strip())
        return wait if wait is not None else matched
    return await session_authorized(request)


async def token_attempt(request: web.Request, given: str) -> tuple[bool, int | None]:
    """A token offered by the request's peer (bearer or login form), compared in constant time:
    (True, None) for the right one, always; (False, None) for a wrong one; (False, seconds to wait) for
    a wrong one past the throttle's budget, answered only after being held."""
    throttle = request.app.get(THROTTLE)
    if throttle is None:
        return hmac.compare_digest(given.encode(), request.app[TOKEN].encode()), None
    matched, wait = throttle.attempt(request.remote or "?", given, request.app[TOKEN])
    if wait is not None:
        async with throttle.held():
            pass
    return matched, wait


def too_many_attempts(wait: int) -> web.Response:
    """429 for a peer refused after too many wrong tokens (its one line says when to come back)."""
    return web.json_response(
        {"error": f"too many wrong admin tokens from this address: try again in {wait} s"},
        status=429,
        headers={"Retry-After": str(wait), "Cache-Control": "no-store"},
    )


async def session_authorized(request: web.Request) -> bool:
    """A genuine, live session cookie, sent by the admin's own pages (or by a tool that is no browser);
    live: not logged out on any worker or replica (``Sessions.alive`` reads the shared store)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower().rstrip("/") != _own_origin(request):
        return False
    sessions = request.app.get(SESSIONS)
    return sessions is not None and await sessions.alive(request.cookies.get(COOKIE), request.app[TOKEN])


def _host_part(host: str) -> str:
    """``[::1]:8898`` -> ``::1``; ``Name.:8898`` -> ``name``."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(host: str | None, settings: Settings) -> bool:
    """The ``Host`` rule; a request without ``Host`` (HTTP/1.0 tools) is not a browser's and passes."""
    if host is None:
        return True
    name = _host_part(host)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    allowed = {_host_part(h) for h in settings.admin.allowed_hosts} | {_host_part(settings.admin.host_port[0])}
    return name in allowed


def _refusal(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.headers.get('Host', '')}".lower()


@web.middleware
async def guard_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in UNGUARDED_PATHS:
        return await handler(request)
    settings: Settings = request.app[POOL].settings
    if not host_allowed(request.headers.get("Host"), settings):
        return _refusal(421, "Host not allowed: add it to admin.allowed_hosts to reach the admin under that name")
    changing = request.method in STATE_CHANGING
    origin = request.headers.get("Origin")
    if changing and origin is not None and origin.lower().rstrip("/") != _own_origin(request):
        return _refusal(403, "cross-origin request refused")
    if request.path == "/api" or request.path.startswith("/api/"):
        authorized = await admin_authorized(request)
        if authorized is not True:
            if authorized is not False:
                return too_many_attempts(authorized)
            return _refusal(401, "missing or wrong bearer token", **{"WWW-Authenticate": 'Bearer realm="proxy-pool"'})
    if changing and request.body_exists and request.content_type != "application/json":
        return _refusal(415, "request body must be application/json")
    return await handler(request)

