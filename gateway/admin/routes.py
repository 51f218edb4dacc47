"""Admin routes for the pool: ``/metrics``, ``/healthz``, the judge at ``/judge``, proxies, sources and stats.

State lives under typed ``AppKey``s; the app is served by ``AppRunner``/``TCPSite`` inside our own
loop.  Answers come from the in-memory view where it is the freshest (proxies, stats) and from
the store where history lives (check log, sources).  No answer ever carries a credential.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.admin.cache import Recent
from gateway.admin.common import MAX_PAGE, POOL, country_param, enum_param, error, int_param, json_object
from plugins import JUDGE_PAGE
from pool.errors import InvalidInputError, NotFoundError
from pool.models import AnonymityLevel, ProxyProtocol, ProxySource, ProxyStatus
from pool.quality import source_figures, source_view
from pool.selector import Route
from pool.sources import add_source

__all__ = ["judge", "judge_page", "add_pool_routes"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[POOL].metrics.exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def judge(request: web.Request) -> web.Response:
    """Echo the caller's address, query and headers, httpbin-style, for self-hosted checking (the
    checker's token comes back in ``args`` and ``headers``)."""
    return web.json_response(
        {"args": dict(request.query), "origin": request.remote, "headers": dict(request.headers)}
    )


async def judge_page(request: web.Request) -> web.Response:
    """The judge page of fixed content that ``content_integrity`` compares byte for byte."""
    return web.Response(body=JUDGE_PAGE, content_type="text/html", charset="utf-8")


async def list_proxies(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    status = enum_param(request, "status", ProxyStatus)
    protocol = enum_param(request, "protocol", ProxyProtocol)
    anonymity = enum_param(request, "anonymity", AnonymityLevel)
    country = country_param(request)
    limit = int_param(request, "limit", 100, 1, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, 10**9) or 0
    matching = [
        p
        for p in pool.selector.proxies()
        if (status is None or p.status is status)
        and (protocol is None or p.protocol is protocol)
        and (anonymity is None or p.anonymity is anonymity)
        and (country is None or (p.country or "").upper() == country)
    ]
    matching.sort(key=lambda p: p.id)
    page = matching[offset : offset + (limit or MAX_PAGE)]
    return web.json_response({"proxies": [p.public_dict() for p in page], "total": len(matching)})


async def pick_proxy(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    route = Route(
        protocol=enum_param(request, "protocol", ProxyProtocol),
        country=country_param(request),
        anonymity=enum_param(request, "anonymity", AnonymityLevel),
    )
    proxy = pool.selector.pick(route)
    if proxy is None:
        return error(404, f"no active proxy for {route.describe()}")
    return web.json_response({"url": proxy.display_url, "proxy": proxy.public_dict()})


async def proxy_checks(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    try:
        proxy_id = int(request.match_info["id"])
    except ValueError:
        raise InvalidInputError("proxy id must be an integer") from None
    await pool.pipeline.flush()
    checks = await pool.store.get_checks(proxy_id)
    return web.json_response({"checks": [c.public_dict() for c in checks]})


# /api/stats: the counts over the whole pool and the sources' figures (a database query) are at most
# this old, computed once for every dashboard asking meanwhile (gateway.admin.cache); the rest is live
STATS_TTL = 2.0
STATS = web.AppKey("stats", Recent)


async def _stats_counted(pool: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The expensive part of /api/stats: a pass over every proxy, and the sources from the database."""
    by: dict[str, dict[str, int]] = {"status": {}, "protocol": {}, "country": {}, "anonymity": {}}
    for proxy in pool.selector.proxies():
        for field, value in (
            ("status", proxy.status.value),
            ("protocol", proxy.protocol.value),
            ("country", proxy.country or "unknown"),
            ("anonymity", proxy.anonymity.value if proxy.anonymity else "unknown"),
        ):
            by[field][value] = by[field].get(value, 0) + 1
    counts = {
        "total": len(pool.selector),
        "selectable": pool.selector.active_count,
        "benched": len(pool.selector.benched),
        "by_status": by["status"],
        "by_protocol": by["protocol"],
        "by_country": by["country"],
        "by_anonymity": by["anonymity"],
    }
    return counts, await _sources_view(pool)


async def list_sites(request: web.Request) -> web.Response:
    """Per site (the registrable domain) what the gateway learnt: the busiest first."""
    sites = request.app[POOL].selector.sites
    limit = int_param(request, "limit", 100, 1, MAX_PAGE) or 100
    return web.json_response(
        {
            "sites": [
                {
                    "site": row.site,
                    "requests": row.requests,
                    "bans": row.bans,
                    "resting": row.resting,
                    "success_rate": row.success_rate,
                    "p50_ms": None if row.p50 is None else round(row.p50 * 1000, 1),
                    "p95_ms": None if row.p95 is None else round(row.p95 * 1000, 1),
                }
                for row in sites.rows(limit)
            ],
            "total": len(sites),
            "learning": sites.learning,
        }
    )


async def stats(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    counts, sources = await request.app[STATS].get()
    notifiers = [
        {"name": n.name, "subscribes_to": list(n.subscribes_to), **pool.notifier_health.get(n.name, {"up": None})}
        for n in pool.registry.notifiers
    ]
    for item in notifiers:
        failures = pool.events.delivery_failures.get(item["name"], 0)
        item["delivery_failures"] = failures
        if failures:
            item["last_delivery_error"] = pool.events.last_error.get(item["name"])
    return web.json_response(
        {
            "replica": pool.replica,
            "pool": counts,
            "sources": sources,
            "notifiers": notifiers,
            "gateway": {
                **pool.metrics.summary(),
                "sessions": pool.selector.session_count,
                "cooldowns": pool.selector.cooldown_count,
                "pooled_upstream_connections": pool.gateway.idle_upstream_connections,
            },
            "checker": {
                "backlog": pool.pipeline.backlog,
                "checked": pool.pipeline.checked_total,
                "checkers": [c.name for c in pool.registry.checkers],
                "disabled": dict(pool.registry.health.disabled),
            },
            "plugins": {
                **pool.registry.health.summary(),
                "skipped": [{"module": i.module, "error": i.error} for i in pool.registry.errors],
            },
        }
    )


async def _sources_view(pool: Any, sources: list[ProxySource] | None = None) -> list[dict[str, Any]]:
    """Sources with their last result and their quality now, from the (shared) database."""
    if sources is None:
        sources = await pool.store.list_sources()
    await pool.pipeline.flush()  # verdicts still in the write-behind buffer count
    figures = source_figures(sources, await pool.store.source_activity(), datetime.now(UTC))
    return [source_view(s, figures[s.id]) for s in sources]


async def list_sources(request: web.Request) -> web.Response:
    return web.json_response({"sources": await _sources_view(request.app[POOL])})


async def get_source(request: web.Request) -> web.Response:
    """One source with its quality and its last scrapes (found, new, error each), newest first."""
    pool = request.app[POOL]
    source = await pool.store.get_source(_source_id(request))
    (view,) = await _sources_view(pool, [source])
    scrapes = await pool.store.source_scrapes(source.id)
    return web.json_response({**view, "scrapes": [s.public_dict() for s in scrapes]})


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInputError(f"{key} must be a string")
    return value


async def create_source(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    body = await json_object(request)
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidInputError("url is required")
    source = await add_source(
        pool.store,
        pool.registry,
        url,
        parser=_opt_str(body, "parser"),
        schedule=_opt_str(body, "schedule"),
        protocol=_opt_str(body, "protocol") or _opt_str(body, "default_protocol"),
        origin="api",
    )
    pool.metrics.register_source(source.id)
    pool.scheduler.wake()
    return web.json_response(source.public_dict(), status=201)


def _source_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise InvalidInputError("source id must be an integer") from None


def _proxy_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise InvalidInputError("proxy id must be an integer") from None


async def recheck_proxy(request: web.Request) -> web.Response:
    """Run the checker pipeline on one proxy now; answers the proxy as it is afterwards."""
    pool = request.app[POOL]
    proxy_id = _proxy_id(request)
    proxy = pool.selector.get(proxy_id)
    if proxy is None:
        raise NotFoundError(f"no proxy with id {proxy_id}")
    run = await pool.pipeline.check_one(proxy)
    failed = run.failed
    return web.json_response(
        {
            "proxy": proxy.public_dict(),
            "failed_check": failed[0].name if failed else None,
            "detail": failed[1].detail if failed else "",
        }
    )


async def delete_proxy(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    proxy_id = _proxy_id(request)
    await pool.store.get_proxy(proxy_id)  # 404 for an unknown id
    await pool.pipeline.flush()
    await pool.store.delete_proxies([proxy_id])
    pool.remove_proxies([proxy_id])
    return web.json_response({"deleted": proxy_id})


async def delete_source(request: web.Request) -> web.Response:
    """The source, and the proxies no other source lists (``?keep_proxies=true`` keeps them)."""
    pool = request.app[POOL]
    source_id = _source_id(request)
    keep = request.query.get("keep_proxies", "false").lower()
    if keep not in ("true", "false", "1", "0"):
        raise InvalidInputError(f"keep_proxies={keep!r}: expected true or false")
    await pool.pipeline.flush()
    removed = await pool.store.remove_source(source_id, keep_proxies=keep in ("true", "1"))
    pool.remove_proxies(removed)
    pool.metrics.forget_source(source_id)
    pool.scheduler.forget_source(source_id)
    return web.json_response({"deleted": source_id, "proxies_removed": len(removed)})


async def scrape_source(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    source = await pool.store.get_source(_source_id(request))
    result = await pool.scraper.scrape(source)
    return web.json_response(
        {
            "source": result.source.public_dict(),
            "found": result.found,
            "new": len(result.new),
            "error": result.error,
        },
        status=200 if result.error is None else 502,
    )




async def _fresh_stats_after_a_change(request: web.Request, response: web.StreamResponse) -> None:
    """A change made through this API shows in the next /api/stats at once (no cached counts)."""
    if response.status < 400 and request.method not in ("GET", "HEAD", "OPTIONS") and request.path.startswith("/api/"):
        request.app[STATS].forget()


def add_pool_routes(app: web.Application) -> None:
    pool = app[POOL]
    app[STATS] = Recent(lambda: _stats_counted(pool), ttl=STATS_TTL)
    app.on_response_prepare.append(_fresh_stats_after_a_change)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/judge", judge)
    app.router.add_get("/judge/page", judge_page)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/sites", list_sites)
    app.router.add_get("/api/proxies", list_proxies)
    app.router.add_get("/api/proxies/pick", pick_proxy)
    app.router.add_get("/api/proxies/{id}/checks", proxy_checks)
    app.router.add_post("/api/proxies/{id}/recheck", recheck_proxy)
    app.router.add_delete("/api/proxies/{id}", delete_proxy)
    app.router.add_get("/api/sources", list_sources)
    app.router.add_post("/api/sources", create_source)
    app.router.add_get("/api/sources/{id}", get_source)
    app.router.add_delete("/api/sources/{id}", delete_source)
    app.router.add_post("/api/sources/{id}/scrape", scrape_source)
