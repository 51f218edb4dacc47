"""The control plane's clock: which source is due, which proxy needs a re-check, what went stale.

The decisions are pure functions of a ``now`` (so tests drive them with a fixed clock); the loop
around them is one task owned by ``Scheduler``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta

from croniter import croniter

from config import Settings
from plugins.registry import PluginRegistry, UnknownParserError
from pool.errors import NotFoundError
from pool.lifecycle import is_due, should_remove
from pool.models import Event, Occasion, ProxySource
from pool.pipeline import Pipeline
from pool.quality import (
    QUALITY_EVERY,
    QUARANTINE_SCRAPE_EVERY,
    SourceFigures,
    hours_without_yield,
    quarantine_changes,
    source_figures,
)
from pool.scraper import Scraper
from pool.selector import Selector
from pool.store import Store
from pool.tasks import TaskSet

__all__ = ["DEFAULT_SCHEDULE", "Scheduler", "is_stale", "next_run", "source_due"]

log = logging.getLogger("proxy_pool.scheduler")

DEFAULT_SCHEDULE = "*/30 * * * *"


def next_run(schedule: str, last_run: datetime | None, now: datetime) -> datetime:
    """When a source with ``schedule`` that last ran at ``last_run`` runs next (now if never)."""
    if last_run is None:
        return now
    return croniter(schedule, last_run).get_next(datetime)


def source_due(schedule: str, last_run: datetime | None, now: datetime) -> bool:
    return next_run(schedule, last_run, now) <= now


def is_stale(source: ProxySource, stale_hours: float, now: datetime) -> float | None:
    """Hours since the last success when that is more than ``stale_hours``, else None."""
    since = source.last_success_at or source.created_at
    hours = (now - since).total_seconds() / 3600
    return hours if hours >= stale_hours else None


@dataclass(eq=False, repr=False)
class Scheduler:
    settings: Settings
    store: Store
    registry: PluginRegistry
    scraper: Scraper
    pipeline: Pipeline
    selector: Selector
    _: KW_ONLY
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    tick: float = 5.0
    # False in the workers of a pool on a SQLite file but its leader: they only read the figures
    leading: Callable[[], bool] = lambda: True
    _tasks: TaskSet = field(default_factory=TaskSet, init=False)
    _stale_announced: set[int] = field(default_factory=set, init=False)
    _last_recheck_scan: datetime | None = field(default=None, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _scraping: set[int] = field(default_factory=set, init=False)
    _bad_schedules: set[str] = field(default_factory=set, init=False)
    _first_pass: bool = field(default=True, init=False)
    # set once the scrapes of the first pass are over
    first_round: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _quality_at: datetime | None = field(default=None, init=False)
    # per source, as of the last quality pass (the gauges)
    figures: dict[int, SourceFigures] = field(default_factory=dict, init=False)
    sources: list[ProxySource] = field(default_factory=list, init=False)  # as of the last quality pass

    async def _scrape(self, source: ProxySource) -> None:
        try:
            await self.scraper.scrape(source)
        except NotFoundError:  # removed (CLI, API) while it was being scraped: nothing to record
            log.info("source #%d was removed during its scrape", source.id)
        finally:
            self._scraping.discard(source.id)

    def schedule_of(self, source: ProxySource) -> str:
        if source.schedule:
            return source.schedule
        try:
            parser = self.scraper.parser_for(source)
        except UnknownParserError:
            return DEFAULT_SCHEDULE
        # a plugin that raises here is that plugin's error, never a stop of every scheduler pass
        schedule = self.registry.health.guard(parser.name, "default_schedule", parser.default_schedule, None)
        schedule = schedule or DEFAULT_SCHEDULE
        if not isinstance(schedule, str) or not croniter.is_valid(schedule):  # a bad default stops no source
            if parser.name not in self._bad_schedules:
                self._bad_schedules.add(parser.name)
                log.warning("parser %s: default_schedule %r is not cron, ignored", parser.name, schedule)
            return DEFAULT_SCHEDULE
        return schedule

    def _due(self, source: ProxySource, now: datetime) -> bool:
        if self._first_pass and source.last_error is not None:
            return True  # its last scrape failed (or was cut short): try again at start, not at the next tick
        if source.quarantined and source.last_run_at is not None and now - source.last_run_at < QUARANTINE_SCRAPE_EVERY:
            return False  # quarantined: scraped rarely
        # a run missed while the gateway was down is due now: the next run after last_run_at is past
        schedule = self.schedule_of(source)
        try:
            return source_due(schedule, source.last_run_at, now)
        except ValueError as exc:  # croniter: e.g. "0 0 31 2 *" never fires; skip it, not every source
            if schedule not in self._bad_schedules:
                self._bad_schedules.add(schedule)
                log.warning("source #%d: schedule %r has no next run (%s)", source.id, schedule, exc)
            return False

    async def start(self) -> None:
        self._tasks.spawn(self._loop(), name="scheduler")

    async def stop(self) -> None:
        await self._tasks.close()

    def forget_source(self, source_id: int) -> None:
        """A removed source leaves the figures (and its gauges) at once."""
        self.figures.pop(source_id, None)
        self.sources = [s for s in self.sources if s.id != source_id]

    def wake(self) -> None:
        """Look at the sources now (e.g. one was just added)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick)
            except TimeoutError:
                pass
            self._wake.clear()

    async def run_once(self) -> None:
        now = self.clock()
        sources = await self.store.list_sources()
        if not self.settings.default_sources:  # turned off: neither scraped nor reported stale
            sources = [s for s in sources if s.origin != "default"]
        if not self.leading():  # another worker scrapes, checks and decides; this one shows the figures
            if self._first_pass:
                self._first_pass = False
                self.first_round.set()
            await self.quality(sources, now, passes=False)
            return
        due = [s for s in sources if self._due(s, now)]
        started: list[asyncio.Task[None]] = []
        for source in due:
            # one replica scrapes it: the one whose claim moves last_run_at on first
            if source.id not in self._scraping and await self.store.claim_source(source.id, source.last_run_at, now):
                self._scraping.add(source.id)
                started.append(self._tasks.spawn(self._scrape(source), name=f"scrape-{source.id}"))
        if self._first_pass:
            self._first_pass = False
            self._tasks.spawn(self._first_round_over(started), name="scheduler-first-round")
        self._announce_stale(sources, now)
        await self.quality(sources, now)
        await self._recheck(now)
        await self._remove_dead(now)

    async def _first_round_over(self, scrapes: list[asyncio.Task[None]]) -> None:
        if scrapes:
            await asyncio.wait(scrapes)
        self.first_round.set()

    async def quality(
        self, sources: list[ProxySource], now: datetime, *, force: bool = False, passes: bool = True
    ) -> None:
        """Source quality (``pool.quality``), at most every ``QUALITY_EVERY``: every replica refreshes its
        figures from the shared database; the one that wins the ``quality`` mark (``passes``: one that
        may run it) counts survival since the last pass, writes yields and decides quarantine (so
        ``source.quarantined`` fires once)."""
        if not force and self._quality_at is not None and timedelta(0) <= now - self._quality_at < QUALITY_EVERY:
            return
        self._quality_at = now
        figures = source_figures(sources, await self.store.source_activity(), now)
        self.figures, self.sources = figures, sources
        if not passes:
            return
        last = await self.store.get_mark("quality")
        if last is not None and now - last < QUALITY_EVERY:
            return  # another replica ran it lately
        if not await self.store.claim_mark("quality", last, now):
            return
        if last is not None:
            await self.store.record_survival(last, now)
        changes = quarantine_changes(sources, figures, self.settings.pool.source_quarantine_hours, now)
        await self.store.record_quality(
            yields=[i for i, f in figures.items() if f.active], at=now, quarantine=changes.as_updates(now)
        )
        for source in changes.left:
            log.info("source #%d yields again: out of quarantine", source.id)
        for source in changes.entered:
            hours = round(hours_without_yield(source, now), 1)
            log.warning("source #%d quarantined: no active proxy for %.1f hours; scraped every 6 h now", source.id, hours)
            self.registry.emit_nowait(
                Event(
                    "source.quarantined",
                    {"source_id": source.id, "source": source.display_url, "hours_without_yield": hours},
                )
            )
        if changes.entered or changes.left:
            self.sources = await self.store.list_sources()

    def _announce_stale(self, sources: list[ProxySource], now: datetime) -> None:
        for source in sources:
            hours = is_stale(source, self.settings.pool.stale_hours, now)
            if hours is None:
                self._stale_announced.discard(source.id)
            elif source.id not in self._stale_announced:
                self._stale_announced.add(source.id)
                since = source.last_success_at or source.created_at  # one occasion per success: once per pool
                self.registry.emit_nowait(
                    Event(
                        "source.stale",
                        {"source_id": source.id, "source": source.display_url, "hours_since_success": round(hours, 1)},
                        once=Occasion(f"event:source.stale:source-{source.id}:since-{since.timestamp():.3f}"),
                    )
                )

    async def _recheck(self, now: datetime) -> None:
        interval = timedelta(seconds=min(30.0, self.settings.checker.recheck_interval / 4))
        if self._last_recheck_scan is not None and now - self._last_recheck_scan < interval:
            return
        self._last_recheck_scan = now
        checker = self.settings.checker
        due = [p for p in self.selector.proxies() if is_due(p, checker, now)]
        if due:
            # each due proxy is checked by one replica: the one that claims it (held for a whole run)
            hold = timedelta(seconds=max(60.0, checker.timeout * 6))
            claimed = set(await self.store.claim_checks(due, datetime.now(UTC) + hold))
            self.pipeline.submit([p for p in due if p.id in claimed])

    async def _remove_dead(self, now: datetime) -> None:
        checker = self.settings.checker
        gone = [p.id for p in self.selector.proxies() if should_remove(p, checker, now)]
        if gone:
            await self.store.delete_proxies(gone)
            for proxy_id in gone:
                self.selector.remove(proxy_id)
            log.info("removed %d proxies dead for more than %g s", len(gone), checker.remove_dead_after)
