"""Source quality and quarantine, and what the operator is told at start.

The scheduler tests use the controlled clock of ``test_scheduler`` (real files, real plugins) with proxies
whose state the test sets in the database (alive or dead on purpose); the replica test runs two schedulers
on one real PostgreSQL; the gateway tests use real pproxy upstreams that are stopped on purpose, and a
source on a closed port whose scrape always fails.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config import Settings
from plugins.discovery import load_all_plugins
from pool.models import Event, ProxyStatus
from pool.store.postgres import PostgresStore
from pool.pipeline import Pipeline
from pool.scheduler import Scheduler
from pool.scraper import Scraper
from pool.selector import Selector
from tests.integration.test_scheduler import Clock, HarnessFactory, harness  # noqa: F401  (the fixture)
from tests.integration.test_users_credits import admin_url
from tests.support.admin import admin_session
from tests.support.upstreams import closed_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)
YEARLY = "0 0 1 1 *"


async def set_status(store, source_id: int, status: ProxyStatus, latencies=(None, None)) -> None:
    """Every proxy of the source to ``status`` in the database (alive or dead on purpose)."""
    mine = [p for p in await store.all_proxies() if p.source_id == source_id]
    for proxy, latency in zip(mine, latencies, strict=False):
        proxy.status, proxy.latency_ms = status, latency
    await store.save_results([(p, []) for p in mine])


async def two_sources(h, tmp_path: Path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("192.0.2.1:8080\n192.0.2.2:8080\n")
    bad.write_text("198.51.100.1:8080\n198.51.100.2:8080\n")
    return await h.add(good.as_uri()), await h.add(bad.as_uri())


async def test_survival_quarantine_and_rare_scrapes(harness: HarnessFactory, tmp_path: Path):  # noqa: F811
    """A source whose proxies all die: survival 0 at 1 h, quarantined after source_quarantine_hours with one
    source.quarantined event, then scraped only every 6 h; the live source: survival 1, median latency, never
    quarantined.  Yielding again lifts the quarantine."""
    h = await harness(pool={"source_quarantine_hours": 2.0})
    good, bad = await two_sources(h, tmp_path)
    t0 = datetime.now(UTC)
    await h.run(t0)
    assert sorted(h.scraped) == [good.id, bad.id]
    await set_status(h.store, good.id, ProxyStatus.ACTIVE, (100.0, 300.0))
    await set_status(h.store, bad.id, ProxyStatus.DEAD)  # died on purpose

    await h.run(t0 + timedelta(minutes=30))
    await h.run(t0 + timedelta(minutes=61))
    figures = h.scheduler.figures
    assert (figures[good.id].active, figures[good.id].median_latency_ms) == (2, 200.0)
    assert (figures[bad.id].active, figures[bad.id].median_latency_ms) == (0, None)
    stored_good, stored_bad = (await h.store.get_source(good.id)).public_dict(), (await h.store.get_source(bad.id)).public_dict()
    assert (stored_good["survival_1h"], stored_bad["survival_1h"]) == (1.0, 0.0)
    assert stored_good["survival_24h"] is None  # nobody is 24 h old yet
    assert stored_good["last_yield_at"] is not None and stored_bad["last_yield_at"] is None
    assert h.of_type("source.quarantined") == []

    h.scraped.clear()
    await h.run(t0 + timedelta(minutes=125))
    (event,) = h.of_type("source.quarantined")
    assert event["source_id"] == bad.id and event["hours_without_yield"] >= 2.0
    assert set(event) == {"source_id", "source", "hours_without_yield"}
    assert (await h.store.get_source(bad.id)).quarantined and not (await h.store.get_source(good.id)).quarantined
    h.scraped.clear()
    await h.run(t0 + timedelta(minutes=150))
    assert h.scraped == [good.id]  # the quarantined one waits its 6 hours
    assert len(h.of_type("source.quarantined")) == 1  # announced once
    h.scraped.clear()
    await h.run(t0 + timedelta(hours=6, minutes=5))
    assert bad.id in h.scraped

    await set_status(h.store, bad.id, ProxyStatus.ACTIVE)  # it yields again
    await h.run(t0 + timedelta(hours=6, minutes=10))
    assert not (await h.store.get_source(bad.id)).quarantined
    assert len(h.of_type("source.quarantined")) == 1


async def test_a_failed_or_missed_scrape_runs_at_start(harness: HarnessFactory, tmp_path: Path):  # noqa: F811
    """Cron ticks far off: a source whose last scrape failed, and one whose hourly run was missed while no
    scheduler ran, are both scraped by the first pass of a new scheduler; a failure later waits for its tick."""
    h = await harness()
    failed_list, missed_list = tmp_path / "failed.txt", tmp_path / "missed.txt"
    failed_list.write_text("192.0.2.9:8080\n")
    missed_list.write_text("192.0.2.10:8080\n")
    failed = await h.add(failed_list.as_uri(), schedule="0 * * * *")
    missed = await h.add(missed_list.as_uri(), schedule="0 * * * *")
    now = datetime(2026, 3, 2, 10, 20, tzinfo=UTC)
    await h.store.record_scrape(failed.id, at=now - timedelta(minutes=10), found=None, new=None, error="connection refused")
    await h.store.record_scrape(missed.id, at=now - timedelta(hours=3), found=1, new=1, error=None)
    await h.run(now)
    assert sorted(h.scraped) == sorted([failed.id, missed.id])
    h.scraped.clear()
    await h.store.record_scrape(failed.id, at=now, found=None, new=None, error="again")
    await h.run(now + timedelta(minutes=2))  # not the first pass any more: it waits for its tick
    assert h.scraped == []


async def test_replicas_count_survival_and_quarantine_once(pg_url: str, tmp_path: Path):
    """Two schedulers on one PostgreSQL database pass at the same moments: survival is counted once (not
    twice) and source.quarantined fires once in all; both see the quarantine."""
    settings = Settings(
        plugins={"contrib_dir": str(tmp_path / "no-contrib")}, checker={"judges": []}, pool={"source_quarantine_hours": 1.0}
    )
    stores = [await PostgresStore.open(pg_url), await PostgresStore.open(pg_url)]
    events: list[Event] = []
    schedulers: list[Scheduler] = []
    scrapers: list[Scraper] = []
    clock = Clock(datetime.now(UTC))
    try:
        for store in stores:
            registry = await load_all_plugins(settings)
            registry.events.add_listener(events.append)
            selector = Selector()
            scraper = Scraper(store, registry, settings.fetch)
            scrapers.append(scraper)
            pipeline = Pipeline(settings, registry, None, selector)
            schedulers.append(Scheduler(settings, store, registry, scraper, pipeline, selector, clock=clock))
        from tests.unit.test_store import up

        source = await stores[0].add_source((tmp_path / "l.txt").as_uri(), schedule=YEARLY)
        await stores[0].upsert_proxies(source.id, [up("192.0.2.1:80"), up("192.0.2.2:80")])
        t0 = clock.now
        await stores[0].record_scrape(source.id, at=t0, found=2, new=2, error=None)
        mine = await stores[0].all_proxies()
        mine[0].status = ProxyStatus.ACTIVE
        await stores[0].save_results([(mine[0], [])])

        async def both(at: datetime) -> None:
            clock.now = at
            await asyncio.gather(*(s.run_once() for s in schedulers))

        await both(t0)
        await both(t0 + timedelta(minutes=61))
        got = await stores[1].get_source(source.id)
        assert (got.seen_1h, got.survived_1h) == (2, 1)  # once, whichever replica counted
        await set_status(stores[1], source.id, ProxyStatus.DEAD)
        await both(t0 + timedelta(minutes=125))  # no active proxy since the yield at 61 min: 64 min
        await both(t0 + timedelta(minutes=130))
        assert [e.type for e in events] == ["source.quarantined"]
        assert [(await s.get_source(source.id)).quarantined for s in stores] == [True, True]
        assert (await stores[0].get_source(source.id)).seen_1h == 2
    finally:
        for scheduler in schedulers:
            await scheduler.stop()
        for scraper in scrapers:
            await scraper.close()
        for store in stores:
            await store.close()


async def api_get(pool, path: str):
    async with admin_session(pool) as client, client.get(admin_url(pool, path)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def metrics_text(pool) -> str:
    async with admin_session(pool) as client, client.get(admin_url(pool, "/metrics")) as resp:
        return await resp.text()


async def test_source_figures_in_the_api_and_metrics_as_proxies_die(make_pool, upstreams):
    """Two live upstreams from one source, one stopped on purpose: active drops from 2 to 1 in /api/sources,
    /api/stats and /api/sources/{id} (which lists its scrapes), and the per-source gauges follow."""
    pool = await make_pool([upstreams[0].url("http"), upstreams[1].url("http")])
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    (source,) = (await api_get(pool, "/api/sources"))["sources"]
    assert (source["active"], source["quarantined"], source["last_found"], source["last_new"]) == (2, False, 2, 2)
    assert source["median_latency_ms"] is not None and source["hours_without_yield"] is None
    await pool.scheduler.quality(await pool.store.list_sources(), datetime.now(UTC), force=True)
    exposition = await metrics_text(pool)
    assert f'proxy_pool_source_active_proxies{{source="{source["id"]}"}} 2.0' in exposition
    assert f'proxy_pool_source_quarantined{{source="{source["id"]}"}} 0.0' in exposition
    assert f'proxy_pool_source_median_latency_seconds{{source="{source["id"]}"}}' in exposition

    await upstreams[1].stop()
    dead = next(p for p in pool.selector.proxies() if p.port == upstreams[1].port)
    async with admin_session(pool) as client:
        async with client.post(admin_url(pool, f"/api/proxies/{dead.id}/recheck")) as resp:
            assert resp.status == 200
            assert (await resp.json())["proxy"]["status"] == "dead"
    (source,) = (await api_get(pool, "/api/stats"))["sources"]
    assert source["active"] == 1
    detail = await api_get(pool, f"/api/sources/{source['id']}")
    assert detail["active"] == 1
    assert detail["scrapes"][0]["found"] == 2 and detail["scrapes"][0]["error"] is None
    await pool.scheduler.quality(await pool.store.list_sources(), datetime.now(UTC), force=True)
    assert f'proxy_pool_source_active_proxies{{source="{source["id"]}"}} 1.0' in await metrics_text(pool)


async def test_bad_source_ids_are_one_line_4xx(make_pool):
    pool = await make_pool()
    async with admin_session(pool) as client:
        for path, status in (("/api/sources/999", 404), ("/api/sources/x", 400)):
            async with client.get(admin_url(pool, path)) as resp:
                assert resp.status == status
                body = await resp.json()
                assert set(body) == {"error"} and "\n" not in body["error"]


def warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


async def test_every_first_scrape_failed_warns_and_pool_low_fires(make_pool, caplog):
    """Sources that all fail and an empty pool: one WARNING saying what to do, and proxy.pool_low once the first
    round is over (the pool started low, so no "fall" ever crossed the threshold)."""
    caplog.set_level(logging.INFO, logger="proxy_pool")
    url = f"http://127.0.0.1:{closed_port()}/list.txt"
    pool = await make_pool(sources=[{"url": url, "parser": "plaintext"}])
    await asyncio.wait_for(pool.scheduler.first_round.wait(), 30)
    await eventually(lambda: bool(warnings(caplog, "every source failed its first scrape")))
    (line,) = warnings(caplog, "every source failed its first scrape")
    assert "--proxies" in line and "proxy-pool sources list" in line
    await eventually(lambda: bool(warnings(caplog, "event proxy.pool_low")))
    (low,) = warnings(caplog, "event proxy.pool_low")
    assert "'active_count': 0" in low and "'threshold': 5" in low
    (source,) = (await api_get(pool, "/api/sources"))["sources"]
    assert source["last_error"] and source["active"] == 0


async def test_a_full_pool_after_the_first_round_is_quiet(make_pool, upstreams, caplog):
    caplog.set_level(logging.INFO, logger="proxy_pool")
    pool = await make_pool([upstreams[0].url("http")], pool={"low_threshold": 1})
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    await asyncio.wait_for(pool.scheduler.first_round.wait(), 30)
    await pool.pipeline.wait_idle()
    assert warnings(caplog, "proxy.pool_low") == []
    assert warnings(caplog, "every source failed") == []
