"""Source quality: which sources feed the pool and which ones rot (pure decisions, no I/O).

A source's proxies are the ones it lists (``proxy_sources``: a proxy two lists carry counts for both).
From the shared database: how many of them are active now and their median latency
(``Store.source_activity``), what each scrape found and how much was new, survival (of the proxies it
listed, the share still active 1 h and 24 h after it first listed them, each counted once per mark by
``Store.record_survival``), and when it last had an active proxy.  A source with none for
``pool.source_quarantine_hours`` is quarantined: scraped at most every ``QUARANTINE_SCRAPE_EVERY``, marked
in every view, announced once with ``source.quarantined``; it leaves quarantine when it yields again.
Replicas run the deciding pass once (``Store.claim_mark``), so the event is emitted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pool.models import ProxySource

__all__ = [
    "QUALITY_EVERY",
    "QUARANTINE_SCRAPE_EVERY",
    "QuarantineChanges",
    "SourceFigures",
    "hours_without_yield",
    "quarantine_changes",
    "source_figures",
    "source_view",
]

QUARANTINE_SCRAPE_EVERY = timedelta(hours=6)
QUALITY_EVERY = timedelta(seconds=30)  # the quality pass reads every active proxy: not on every 5 s tick


@dataclass(frozen=True, slots=True)
class SourceFigures:
    """One source's figures now (the stored ones, survival and quarantine, are on ``ProxySource``)."""

    active: int
    median_latency_ms: float | None
    hours_without_yield: float | None  # None while it has an active proxy

    def public_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "median_latency_ms": self.median_latency_ms,
            "hours_without_yield": self.hours_without_yield,
        }


def hours_without_yield(source: ProxySource, now: datetime) -> float:
    """Hours since the source last had an active proxy (since it was added, if never)."""
    since = source.last_yield_at or source.created_at
    return max(0.0, (now - since).total_seconds() / 3600)


def source_figures(
    sources: Iterable[ProxySource], activity: Mapping[int, tuple[int, float | None]], now: datetime
) -> dict[int, SourceFigures]:
    """Per source id, from ``Store.source_activity`` (active proxies it lists, their median latency)."""
    out: dict[int, SourceFigures] = {}
    for source in sources:
        active, median = activity.get(source.id, (0, None))
        out[source.id] = SourceFigures(
            active=active,
            median_latency_ms=None if median is None else round(median, 1),
            hours_without_yield=None if active else round(hours_without_yield(source, now), 1),
        )
    return out


def source_view(source: ProxySource, figures: SourceFigures) -> dict[str, Any]:
    """What every view shows of a source: its stored record and its figures now."""
    return {**source.public_dict(), **figures.public_dict()}


@dataclass(frozen=True, slots=True)
class QuarantineChanges:
    entered: list[ProxySource]
    left: list[ProxySource]

    def as_updates(self, now: datetime) -> dict[int, datetime | None]:
        return {**{s.id: now for s in self.entered}, **{s.id: None for s in self.left}}


def quarantine_changes(
    sources: Iterable[ProxySource], figures: Mapping[int, SourceFigures], quarantine_hours: float, now: datetime
) -> QuarantineChanges:
    """Who enters quarantine (no active proxy for ``quarantine_hours``, and scraped at least once: a new
    source gets its chance) and who leaves it (an active proxy again)."""
    entered: list[ProxySource] = []
    left: list[ProxySource] = []
    for source in sources:
        active = figures[source.id].active if source.id in figures else 0
        if source.quarantined:
            if active > 0:
                left.append(source)
        elif active == 0 and source.last_run_at is not None and hours_without_yield(source, now) >= quarantine_hours:
            entered.append(source)
    return QuarantineChanges(entered, left)
