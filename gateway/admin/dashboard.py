"""The operator's dashboard at ``/`` on the admin port: a server-rendered page, one small script, no build step.

Login: the form posts the admin token as JSON to ``/login`` (the form itself says POST, so even without its
script the token never lands in a URL); a right token gets a new signed session (``gateway.admin.sessions``)
in an HttpOnly, SameSite=Strict cookie, and the token itself never travels again.  Without a valid session
``/`` is the login form and nothing else.  The page is live by polling the JSON API with that
cookie (``/api/stats``, ``/api/users``, ``/api/proxies``, ``/api/sites``, ``/api/history``, ``/api/events``); every action
goes through the same admin routes, as JSON from the admin's own origin (the CSRF rules hold).  Charts are
inline SVG drawn by the script: nothing is vendored, nothing comes from a CDN.
"""

from __future__ import annotations

import html
import logging
import math
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.admin.common import POOL, json_object
from gateway.admin.guard import TOKEN, session_authorized, token_attempt, too_many_attempts
from gateway.admin.history import EVENTS, HISTORY, EventLog, History, history_context
from gateway.admin.sessions import COOKIE, SESSION_SECONDS, SESSIONS, Sessions
from pool.errors import InvalidInputError
from pool.models import ProxyStatus

log = logging.getLogger("proxy_pool.admin")

__all__ = ["add_dashboard_routes"]

# scripts and styles only from the admin itself; the page cannot be framed (clickjacking)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> str:
    return resources.files("gateway.admin").joinpath("static", name).read_text(encoding="utf-8")


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><link rel=\"stylesheet\" href=\"/dashboard.css\"></head>"
        f"<body>{body}<script src=\"/dashboard.js\"></script></body></html>"
    )
    return web.Response(text=text, status=status, content_type="text/html", headers=PAGE_HEADERS)


LOGIN = """<main class="login"><h1>proxy-pool</h1>
<form id="login-form" method="post" action="/login" autocomplete="off"><label>Admin token
<input id="login-token" name="token" type="password" autofocus required></label>
<button type="submit">Log in</button><p id="login-error" class="error" role="alert"></p>
<p class="hint">The token is <code>admin.token</code>, or the one <code>proxy-pool admin-token</code> prints.</p>
</form></main>"""


def _dashboard(pool: Any) -> str:
    """The page with the figures of this moment; the script keeps them current."""
    selector = pool.selector
    cards = [
        ("pool-total", "proxies known", len(selector)),
        ("pool-active", "active", selector.active_count),
        ("pool-benched", "benched", len(selector.benched)),
        ("checker-backlog", "checker backlog", pool.pipeline.backlog),
        ("gw-connections", "connections", pool.metrics.active_connections()),
    ]
    card_html = "".join(
        f'<div class="card"><span class="value" id="{cid}">{value}</span><span class="label">{html.escape(label)}</span></div>'
        for cid, label, value in cards
    )
    replica = html.escape(pool.replica)
    return f"""<header><h1>proxy-pool</h1><span class="replica">replica <strong id="replica">{replica}</strong></span>
<span id="updated" class="muted">live</span>
<button id="logout" type="button">Log out</button></header>
<main id="dashboard">
<section class="cards" id="cards">{card_html}
<div class="card"><span class="value" id="gw-rps">0</span><span class="label">requests/s</span></div>
<div class="card"><span class="value" id="gw-latency">-</span><span class="label">latency p50 / p95 / p99 ms</span></div>
<div class="card"><span class="value" id="gw-bytes">0 / 0</span><span class="label">bytes/s up / down</span></div>
<div class="card"><span class="value" id="checker-rate">0</span><span class="label">checks/s</span></div>
<div class="card wide"><span class="value small" id="gw-outcomes">-</span><span class="label">requests/s by outcome</span></div>
</section>
<section class="charts">
<figure><figcaption>Pool over time (total, active, new, dead, benched)</figcaption><div id="chart-pool" class="chart"></div></figure>
<figure><figcaption>Requests per second (ok, failed)</figcaption><div id="chart-requests" class="chart"></div></figure>
<figure><figcaption>Active proxies by country</figcaption><div id="chart-countries" class="chart"></div></figure>
</section>
<section><h2>Pool</h2><div class="row"><table id="by-status"></table><table id="by-protocol"></table>
<table id="by-anonymity"></table><table id="by-country"></table></div></section>
<section><h2>Checker</h2><table id="checkers"></table>
<button id="recheck-dead" type="button">Re-check all dead</button> <span id="recheck-result" class="muted"></span></section>
<section><h2>Sources</h2><table id="sources"></table>
<form id="add-source-form"><input name="url" placeholder="https://example.com/proxies.txt or /path/list.txt" required>
<input name="parser" placeholder="parser (optional)"><input name="protocol" placeholder="protocol (http)">
<button type="submit">Add source</button></form></section>
<section><h2>Users</h2><table id="users"></table>
<form id="add-user-form"><input name="name" placeholder="name" required><input name="credits" type="number" min="0" value="0">
<button type="submit">Add user</button></form>
<p id="new-password" class="password" hidden></p></section>
<section><h2>Proxies <span id="proxies-count" class="muted"></span></h2><table id="proxies"></table></section>
<section><h2>Sites <span id="sites-count" class="muted"></span></h2><table id="sites"></table></section>
<section><h2>Notifiers</h2><table id="notifiers"></table></section>
<section><h2>Events</h2><ol id="events"></ol></section>
<p id="action-error" class="error" role="alert"></p>
</main>"""


async def index(request: web.Request) -> web.Response:
    if not await session_authorized(request):
        return _page("proxy-pool: log in", LOGIN)
    return _page("proxy-pool", _dashboard(request.app[POOL]))


async def login(request: web.Request) -> web.Response:
    body = await json_object(request)
    given = body.get("token")
    if not isinstance(given, str) or not given:
        raise InvalidInputError("token is required")
    token = request.app[TOKEN]
    matched, wait = await token_attempt(request, given)
    if wait is not None:
        return too_many_attempts(wait)
    if not matched:
        return web.json_response({"error": "wrong admin token"}, status=401, headers={"Cache-Control": "no-store"})
    # always a new session, whatever cookie came with the request (no fixation)
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        COOKIE,
        request.app[SESSIONS].issue(token),
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    try:
        await request.app[SESSIONS].end(request.cookies.get(COOKIE), request.app[TOKEN])
    except Exception as exc:  # ended here, but the other workers and replicas could not be told
        log.warning("dashboard logout not recorded in the database: %s", type(exc).__name__)
        response = web.json_response(
            {"error": "logged out here, but the database is unreachable: other workers may accept the session until it expires"},
            status=503,
            headers={"Cache-Control": "no-store"},
        )
        response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
        return response
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response


async def script(request: web.Request) -> web.Response:
    return web.Response(
        text=_static("dashboard.js"), content_type="application/javascript", headers={"Cache-Control": "no-cache"}
    )


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=_static("dashboard.css"), content_type="text/css", headers={"Cache-Control": "no-cache"})


def _active_breakdown(pool: Any) -> dict[str, dict[str, int]]:
    """The active proxies now by protocol, country and anonymity (read when the page asks, not sampled)."""
    by: dict[str, dict[str, int]] = {"protocol": {}, "country": {}, "anonymity": {}}
    for proxy in pool.selector.proxies():
        if proxy.status is not ProxyStatus.ACTIVE:
            continue
        for field, value in (
            ("protocol", proxy.protocol.value),
            ("country", proxy.country or "unknown"),
            ("anonymity", proxy.anonymity.value if proxy.anonymity else "unknown"),
        ):
            by[field][value] = by[field].get(value, 0) + 1
    return by


def _since(request: web.Request) -> float:
    value = request.query.get("since", "")
    if not value:
        return float("-inf")
    try:
        since = float(value)
    except ValueError:
        raise InvalidInputError(f"since={value!r}: expected a Unix time in seconds") from None
    if not math.isfinite(since):
        raise InvalidInputError(f"since={value!r}: expected a Unix time in seconds")
    return since


async def history(request: web.Request) -> web.Response:
    """The ring buffer, or with ``?since=T`` only the points after T (the page polls for what is new)."""
    recorded = request.app[HISTORY]
    since = _since(request)
    points = list(recorded.points)
    if since != float("-inf"):
        points = [p for p in points if p["t"] > since]
    return web.json_response(
        {
            "replica": request.app[POOL].replica,
            "interval": recorded.interval,
            "capacity": recorded.points.maxlen,
            "points": points,
            "checkers": recorded.checker_rates(),
            "active_by": _active_breakdown(request.app[POOL]),
        }
    )


async def events(request: web.Request) -> web.Response:
    return web.json_response({"events": request.app[EVENTS].latest()})


def add_dashboard_routes(app: web.Application, *, interval: float = 5.0) -> None:
    pool = app[POOL]
    app[SESSIONS] = Sessions(store=getattr(pool, "store", None))
    app[HISTORY] = History(pool, interval=interval)
    log = EventLog()
    app[EVENTS] = log
    bus = getattr(pool, "events", None)
    if bus is not None:
        bus.add_listener(log)
    app.cleanup_ctx.append(history_context)
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/dashboard.js", script)
    app.router.add_get("/dashboard.css", stylesheet)
    app.router.add_get("/api/history", history)
    app.router.add_get("/api/events", events)
