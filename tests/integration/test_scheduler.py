"""The Scheduler's passes with a controlled clock: due sources, stale sources, re-checks, removals.

The loop is never started: each test calls ``run_once()`` with the clock where it wants it.  Sources
are real files and a real aiohttp server on 127.0.0.1; the store is SQLite; the plugins are the real
ones.  The pipeline is built but not started, so re-checks only queue (no proxy is ever dialed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from config import Settings
from plugins import DiscoveredProxy, ProxySource, UpstreamURL
from plugins.discovery import load_all_plugins
from plugins.registry import PluginRegistry
from pool.models import Event, ProxyProtocol, ProxyStatus
from pool.pipeline import Pipeline
from pool.scheduler import DEFAULT_SCHEDULE, Scheduler
from pool.scraper import Scraper
from pool.selector import Selector
from pool.store import SqliteStore

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # a Monday, on the hour
LIST = b"192.0.2.1:8080\n192.0.2.2:3128\n"


class Clock:
    """A clock that only moves when the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class DailyParser:
    """A real parser plugin whose own default schedule is once a day at 03:00."""

    name: str = "daily"
    schedule: str | None = "0 3 * * *"

    def supports(self, url: str) -> bool:
        return url.endswith(".daily")

    async def parse(self, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        found = []
        for line in raw.decode().split():
            url = UpstreamURL.parse(line, default_protocol=source.default_protocol)
            found.append(DiscoveredProxy(url.host, url.port))
        return found

    def default_schedule(self) -> str | None:
        return self.schedule


@dataclass
class Harness:
    settings: Settings
    store: SqliteStore
    registry: PluginRegistry
    scraper: Scraper
    pipeline: Pipeline
    selector: Selector
    scheduler: Scheduler
    clock: Clock
    events: list[Event] = field(default_factory=list)
    scraped: list[int] = field(default_factory=list)

    async def run(self, at: datetime) -> None:
        """One scheduler pass at ``at``, then wait for the scrapes it started."""
        self.clock.now = at
        await self.scheduler.run_once()
        # the scrapes run as tasks of the scheduler; every one is bounded by fetch.timeout
        await asyncio.wait_for(self.scheduler._tasks.wait(), 30)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e.payload for e in self.events if e.type == type_]

    async def add(self, url: str, **kwargs: Any) -> ProxySource:
        fields: dict[str, Any] = {"parser": None, "schedule": None, "default_protocol": ProxyProtocol.HTTP}
        fields["origin"] = "user"
        fields.update(kwargs)
        return await self.store.add_source(url, **fields)


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    built: list[Harness] = []

    async def build(**overrides: Any) -> Harness:
        settings = Settings(
            **{
                "plugins": {"contrib_dir": str(tmp_path / "no-contrib")},
                "fetch": {"timeout": 5.0},
                "checker": {"judges": []},
                **overrides,
            }
        )
        store = await SqliteStore.open(tmp_path / f"pool{len(built)}.db")
        registry = await load_all_plugins(settings)
        selector = Selector()
        pipeline = Pipeline(settings, registry, None, selector)
        h = Harness(settings, store, registry, None, pipeline, selector, None, Clock(T0))  # type: ignore[arg-type]
        h.scraper = Scraper(
            store, registry, settings.fetch, on_scraped=lambda r: h.scraped.append(r.source.id)
        )
        h.scheduler = Scheduler(settings, store, registry, h.scraper, pipeline, selector, clock=h.clock)
        registry.events.add_listener(h.events.append)
        built.append(h)
        return h

    yield build
    for h in reversed(built):
        await h.scheduler.stop()
        await h.scraper.close()
        await h.store.close()


@pytest.fixture
def listing(tmp_path: Path) -> Path:
    path = tmp_path / "list.txt"
    path.write_bytes(LIST)
    return path


# due sources ------------------------------------------------------------------------------
async def test_never_run_sources_are_scraped_on_the_first_pass(
    harness: HarnessFactory, listing: Path
) -> None:
    """A pass scrapes every source that never ran, and they record their results."""
    h = await harness()
    a = await h.add(listing.as_uri())
    b = await h.add(listing.as_uri() + "?copy", parser="plaintext")  # same file, another source URL

    await h.run(T0)

    assert sorted(h.scraped) == [a.id, b.id]
    for source in await h.store.list_sources():
        assert (source.last_found, source.last_error) == (2, None)
    assert len(await h.store.all_proxies()) == 2


async def test_a_worker_that_does_not_lead_scrapes_nothing_until_it_leads(
    harness: HarnessFactory, listing: Path
) -> None:
    """serve --workers on SQLite: a worker without the leader lock neither scrapes nor claims the quality
    pass; it reads the source figures; once it leads, it does both."""
    h = await harness()
    leading = False
    h.scheduler.leading = lambda: leading
    source = await h.add(listing.as_uri())

    await h.run(T0)
    assert h.scraped == [] and h.scheduler.first_round.is_set()
    assert source.id in h.scheduler.figures
    assert await h.store.get_mark("quality") is None

    leading = True
    await h.run(T0 + timedelta(hours=1))
    assert h.scraped == [source.id]
    assert await h.store.get_mark("quality") == T0 + timedelta(hours=1)


async def test_only_due_sources_are_scraped(harness: HarnessFactory, listing: Path) -> None:
    """With a fixed clock, a source runs at its cron fire time and not before."""
    h = await harness()
    half_hourly = await h.add(listing.as_uri(), schedule="*/30 * * * *")
    hourly = await h.add(listing.as_uri() + "?h", schedule="0 * * * *")
    for source in (half_hourly, hourly):
        await h.store.record_scrape(source.id, at=T0, found=2, new=2, error=None)

    await h.run(T0 + timedelta(minutes=29))
    assert h.scraped == []

    await h.run(T0 + timedelta(minutes=30))
    assert h.scraped == [half_hourly.id]

    h.scraped.clear()
    await h.store.record_scrape(half_hourly.id, at=T0 + timedelta(minutes=30), found=2, new=0, error=None)
    await h.run(T0 + timedelta(minutes=45))
    assert h.scraped == []

    await h.run(T0 + timedelta(hours=1))
    assert sorted(h.scraped) == [half_hourly.id, hourly.id]


async def test_source_schedule_wins_over_the_parser_default(harness: HarnessFactory, tmp_path: Path) -> None:
    """A source's own schedule is used when set; otherwise its parser's default_schedule; else every 30 min."""
    h = await harness()
    h.registry.register_parser(DailyParser(), "tests")
    h.registry.register_parser(DailyParser(name="no_default", schedule=None), "tests")
    feed = tmp_path / "feed.daily"
    feed.write_text("192.0.2.7:8080\n")
    parser_default = await h.add(feed.as_uri())  # chosen by supports(): daily at 03:00
    own = await h.add(feed.as_uri() + "?own", parser="daily", schedule="0 * * * *")
    fallback = await h.add(feed.as_uri() + "?none", parser="no_default")
    plain = await h.add(tmp_path.joinpath("x.txt").as_uri())  # the plaintext parser's own default

    assert h.scheduler.schedule_of(parser_default) == "0 3 * * *"
    assert h.scheduler.schedule_of(own) == "0 * * * *"
    assert h.scheduler.schedule_of(fallback) == DEFAULT_SCHEDULE
    assert h.scheduler.schedule_of(plain) == "*/30 * * * *"

    for source in (parser_default, own, fallback):
        await h.store.record_scrape(source.id, at=T0, found=1, new=0, error=None)
    await h.store.remove_source(plain.id)

    await h.run(T0 + timedelta(minutes=30))
    assert h.scraped == [fallback.id]
    # the scraper stamps the real time; put the run back on the test's clock
    await h.store.record_scrape(fallback.id, at=T0 + timedelta(minutes=30), found=1, new=0, error=None)

    h.scraped.clear()
    await h.run(T0 + timedelta(hours=1))
    assert sorted(h.scraped) == [own.id, fallback.id]  # the daily one waits for 03:00

    h.scraped.clear()
    await h.run(datetime(2024, 6, 4, 3, 0, tzinfo=UTC))
    assert parser_default.id in h.scraped


async def test_default_sources_skipped_when_turned_off(harness: HarnessFactory, listing: Path) -> None:
    """A source of origin 'default' is not scraped when default_sources is false; others are."""
    off = await harness(default_sources=False)
    builtin = await off.add(listing.as_uri(), origin="default")
    mine = await off.add(listing.as_uri() + "?mine", origin="user")
    config = await off.add(listing.as_uri() + "?config", origin="config")

    await off.run(T0)

    assert sorted(off.scraped) == [mine.id, config.id]
    assert (await off.store.get_source(builtin.id)).last_run_at is None

    on = await harness(default_sources=True)
    builtin_on = await on.add(listing.as_uri(), origin="default")
    await on.run(T0)
    assert on.scraped == [builtin_on.id]


async def test_a_source_being_scraped_is_not_started_twice(
    harness: HarnessFactory, aiohttp_server: ServerFactory
) -> None:
    """A pass while the previous scrape of a source still runs does not start a second one."""
    release = asyncio.Event()
    arrived = asyncio.Event()
    hits = 0

    async def slow_list(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        arrived.set()
        await release.wait()
        return web.Response(body=LIST)

    app = web.Application()
    app.router.add_get("/list.txt", slow_list)
    server = await aiohttp_server(app, host="127.0.0.1")
    h = await harness()
    await h.add(str(server.make_url("/list.txt")))

    h.clock.now = T0
    await h.scheduler.run_once()
    await asyncio.wait_for(arrived.wait(), 10)
    h.clock.now = T0 + timedelta(hours=1)
    await h.scheduler.run_once()  # still running: not started again
    release.set()
    await h.run(T0 + timedelta(hours=1))

    assert hits == 1
    assert len(h.scraped) == 1


async def test_a_source_removed_during_its_scrape_is_dropped_quietly(
    harness: HarnessFactory, aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Removing a source while the scheduler scrapes it: no task error, no orphan proxies, other sources fine."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow_list(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(body=LIST)

    app = web.Application()
    app.router.add_get("/list.txt", slow_list)
    server = await aiohttp_server(app, host="127.0.0.1")
    h = await harness()
    source = await h.add(str(server.make_url("/list.txt")))

    h.clock.now = T0
    await h.scheduler.run_once()
    await asyncio.wait_for(arrived.wait(), 10)
    await h.store.remove_source(source.id)
    release.set()
    await h.run(T0)

    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert await h.store.all_proxies() == []
    assert await h.store.list_sources() == []


async def test_a_parser_with_a_broken_default_schedule_does_not_stop_other_sources(
    harness: HarnessFactory, listing: Path, tmp_path: Path
) -> None:
    """A plugin whose default_schedule is not cron falls back to the default; other sources keep running."""
    h = await harness()
    h.registry.register_parser(DailyParser(name="broken", schedule="every half hour"), "tests")
    feed = tmp_path / "feed.daily"
    feed.write_text("192.0.2.9:8080\n")
    broken = await h.add(feed.as_uri(), parser="broken")
    good = await h.add(listing.as_uri(), schedule="0 * * * *")
    await h.run(T0)
    assert sorted(h.scraped) == [broken.id, good.id]
    for source in (broken, good):
        await h.store.record_scrape(source.id, at=T0, found=1, new=0, error=None)
    h.scraped.clear()

    await h.run(T0 + timedelta(hours=1))

    assert h.scheduler.schedule_of(broken) == DEFAULT_SCHEDULE
    assert sorted(h.scraped) == [broken.id, good.id]


async def test_a_schedule_that_never_fires_does_not_stop_other_sources(
    harness: HarnessFactory, listing: Path
) -> None:
    """A stored source whose cron has no next date ("0 0 31 2 *") is skipped; the others keep running."""
    h = await harness()
    never = await h.add(listing.as_uri() + "?never", schedule="0 0 31 2 *")
    good = await h.add(listing.as_uri(), schedule="0 * * * *")
    await h.run(T0)
    assert sorted(h.scraped) == [never.id, good.id]  # a source that never ran runs at once
    for source in (never, good):
        await h.store.record_scrape(source.id, at=T0, found=2, new=0, error=None)
    h.scraped.clear()

    await h.run(T0 + timedelta(hours=1))

    assert h.scraped == [good.id]


# stale sources ----------------------------------------------------------------------------
async def test_source_stale_fires_once_until_the_next_success(harness: HarnessFactory, listing: Path) -> None:
    """source.stale fires once when no success for stale_hours, not again while stale, again after a recovery."""
    h = await harness(pool={"stale_hours": 24})
    source = await h.add(listing.as_uri(), schedule="*/30 * * * *")
    content = listing.read_bytes()
    listing.unlink()  # every scrape fails until the file is back
    created = source.created_at

    await h.run(created + timedelta(hours=23))
    assert h.of_type("source.stale") == []
    assert [p["consecutive_failures"] for p in h.of_type("source.failed")] == [1]

    await h.run(created + timedelta(hours=25))
    stale = h.of_type("source.stale")
    assert len(stale) == 1
    assert stale[0]["source_id"] == source.id and stale[0]["source"] == source.url
    assert 24.9 <= stale[0]["hours_since_success"] <= 25.1

    await h.run(created + timedelta(hours=26))
    await h.run(created + timedelta(hours=30))
    assert len(h.of_type("source.stale")) == 1  # still stale: said once
    assert [p["consecutive_failures"] for p in h.of_type("source.failed")] == [1, 2, 3, 4]

    listing.write_bytes(content)
    await h.run(created + timedelta(hours=31))  # this pass scrapes successfully
    recovered = await h.store.get_source(source.id)
    assert recovered.last_success_at is not None and recovered.consecutive_failures == 0
    await h.run(recovered.last_success_at + timedelta(hours=1))  # fresh again
    assert len(h.of_type("source.stale")) == 1

    last_success = (await h.store.get_source(source.id)).last_success_at
    assert last_success is not None
    await h.run(last_success + timedelta(hours=24, minutes=1))
    assert len(h.of_type("source.stale")) == 2  # a new stale period, a new event


async def test_stale_is_per_source(harness: HarnessFactory, listing: Path, tmp_path: Path) -> None:
    """Only the source without a recent success is announced stale."""
    h = await harness(pool={"stale_hours": 2})
    fresh = await h.add(listing.as_uri(), schedule="0 0 1 1 *")
    dead = await h.add(tmp_path.joinpath("gone.txt").as_uri(), schedule="0 0 1 1 *")
    base = max(fresh.created_at, dead.created_at)
    await h.run(base)
    await h.store.record_scrape(fresh.id, at=base + timedelta(hours=3), found=2, new=0, error=None)
    await h.store.record_scrape(dead.id, at=base + timedelta(hours=3), found=None, new=None, error="gone")

    await h.run(base + timedelta(hours=3))

    stale = h.of_type("source.stale")
    assert [p["source_id"] for p in stale] == [dead.id]


async def test_skipped_default_sources_are_not_announced_stale(
    harness: HarnessFactory, listing: Path
) -> None:
    """A default source the user turned off is neither scraped nor reported stale."""
    h = await harness(default_sources=False, pool={"stale_hours": 1})
    source = await h.add(listing.as_uri(), origin="default")

    await h.run(source.created_at + timedelta(hours=48))

    assert h.scraped == []
    assert h.of_type("source.stale") == []


# re-checks and removals -------------------------------------------------------------------
async def _proxies_in(
    h: Harness, states: list[tuple[ProxyStatus, datetime | None, datetime | None]]
) -> list[int]:
    """Insert proxies and give each (status, last_checked, dead_since); load them into the selector."""
    ups = [UpstreamURL.parse(f"192.0.2.{i + 1}:8080", default_protocol="http") for i in range(len(states))]
    result = await h.store.upsert_proxies(None, ups)
    rows = []
    for proxy, (status, checked, dead_since) in zip(result.new, states, strict=True):
        proxy.status, proxy.last_checked, proxy.dead_since = status, checked, dead_since
        proxy.consecutive_failures = 1 if status is ProxyStatus.DEAD else 0
        rows.append((proxy, []))
    await h.store.save_results(rows)
    h.selector.load(await h.store.all_proxies())
    return [p.id for p in result.new]


async def test_due_proxies_are_queued_for_a_recheck(harness: HarnessFactory) -> None:
    """Active proxies checked longer than recheck_interval ago go to the checker; fresh ones do not."""
    h = await harness(checker={"judges": [], "recheck_interval": 600, "dead_backoff": 1800})
    now = T0
    await _proxies_in(
        h,
        [
            (ProxyStatus.ACTIVE, now - timedelta(minutes=11), None),  # due
            (ProxyStatus.ACTIVE, now - timedelta(minutes=5), None),  # fresh
            (ProxyStatus.DEAD, now - timedelta(minutes=40), now - timedelta(hours=1)),  # back-off over: due
            (ProxyStatus.DEAD, now - timedelta(minutes=10), now - timedelta(hours=1)),  # still backing off
            (ProxyStatus.NEW, None, None),  # never checked: due
        ],
    )

    await h.run(now)

    assert h.pipeline.backlog == 3


async def test_long_dead_proxies_are_removed(harness: HarnessFactory) -> None:
    """A proxy dead for longer than remove_dead_after leaves the store and the selector; others stay."""
    h = await harness(checker={"judges": [], "remove_dead_after": 3 * 86400})
    now = T0
    gone, recent, alive = await _proxies_in(
        h,
        [
            (ProxyStatus.DEAD, now - timedelta(hours=1), now - timedelta(days=3, minutes=1)),
            (ProxyStatus.DEAD, now - timedelta(hours=1), now - timedelta(days=2)),
            (ProxyStatus.ACTIVE, now - timedelta(minutes=1), None),
        ],
    )

    await h.run(now)

    assert sorted(p.id for p in await h.store.all_proxies()) == [recent, alive]
    assert h.selector.get(gone) is None
    assert h.selector.get(recent) is not None
