"""Sources and their quality figures: the list of sources, each scrape kept over time, which proxies
a source lists, how many of them are active and survive (the inputs of ``pool/quality.py``)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from pool.errors import DuplicateError, NotFoundError
from pool.models import ProxyProtocol, ProxySource, masked_url
from pool.store.backend import Lock, StoreBackend
from pool.store.records import (
    SCRAPES_KEEP,
    SOURCE_COLUMNS,
    SURVIVAL_MARKS,
    Row,
    SourceScrape,
    dt,
    source_row,
    ts,
)

__all__ = ["SourcesMixin"]

# the proxies a source lists (or brought first) that no other source lists: they go with it
_DELETE_ORPHANS = (
    "DELETE FROM proxies AS p WHERE (p.source_id = ? OR EXISTS (SELECT 1 FROM proxy_sources s "
    "WHERE s.proxy_id = p.id AND s.source_id = ?)) AND NOT EXISTS (SELECT 1 FROM proxy_sources s "
    "WHERE s.proxy_id = p.id AND s.source_id != ?) RETURNING id"
)
# every active proxy's latency per listing source (a window-function median in SQL measured 2x slower
# on SQLite for 50,000 active proxies: ~400 ms against ~170 ms, ~15 ms of it grouping on the event loop)
_ACTIVE_LATENCIES = (
    "SELECT s.source_id, p.latency_ms FROM proxy_sources s JOIN proxies p ON p.id = s.proxy_id "
    "WHERE p.status = 'active'"
)

# one pass over the links: per source, how many reached ``first_seen + 1 h`` (``m0``) and ``+ 24 h``
# (``m1``) in (since, until], and how many of those are active now, added to its survival figures
_CROSSED = "s.first_seen + b.{m} > b.since AND s.first_seen + b.{m} <= b.until"
_SURVIVAL = (
    "WITH b AS (SELECT CAST(? AS DOUBLE PRECISION) AS since, CAST(? AS DOUBLE PRECISION) AS until, "
    "CAST(? AS DOUBLE PRECISION) AS m0, CAST(? AS DOUBLE PRECISION) AS m1) "
    "UPDATE sources SET seen_1h = sources.seen_1h + c.s1, survived_1h = sources.survived_1h + c.a1, "
    "seen_24h = sources.seen_24h + c.s24, survived_24h = sources.survived_24h + c.a24 FROM ("
    "SELECT s.source_id, "
    f"COUNT(*) FILTER (WHERE {_CROSSED.format(m='m0')}) AS s1, "
    f"COUNT(*) FILTER (WHERE {_CROSSED.format(m='m0')} AND p.status = 'active') AS a1, "
    f"COUNT(*) FILTER (WHERE {_CROSSED.format(m='m1')}) AS s24, "
    f"COUNT(*) FILTER (WHERE {_CROSSED.format(m='m1')} AND p.status = 'active') AS a24 "
    "FROM proxy_sources s JOIN proxies p ON p.id = s.proxy_id CROSS JOIN b "
    f"WHERE ({_CROSSED.format(m='m0')}) OR ({_CROSSED.format(m='m1')}) "
    "GROUP BY s.source_id) AS c WHERE sources.id = c.source_id"
)


def _activity(rows: Iterable[Row]) -> dict[int, tuple[int, float | None]]:
    """``(source_id, latency_ms)`` rows -> per source: active count and median measured latency."""
    latencies: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    for row in rows:
        source_id, latency = row[0], row[1]
        counts[source_id] = counts.get(source_id, 0) + 1
        if latency is not None:
            latencies.setdefault(source_id, []).append(latency)
    return {
        int(i): (n, statistics.median(latencies[i]) if i in latencies else None) for i, n in counts.items()
    }


class SourcesMixin(StoreBackend):
    """The sources half of the seam, for either database."""

    async def add_source(
        self,
        url: str,
        *,
        parser: str | None = None,
        schedule: str | None = None,
        default_protocol: ProxyProtocol = ProxyProtocol.HTTP,
        origin: str = "user",
    ) -> ProxySource:
        now = datetime.now(UTC).timestamp()
        try:
            async with self._write() as tx:
                row = await tx.fetchrow(
                    "INSERT INTO sources (url, parser, schedule, default_protocol, origin, created_at) "
                    f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {SOURCE_COLUMNS}",
                    url, parser, schedule, ProxyProtocol(default_protocol).value, origin, now,
                )
                assert row is not None
                await tx.notify("sources", [row[0]])
        except self.DUPLICATE:
            raise DuplicateError(f"source {masked_url(url)} already exists") from None
        return source_row(row)

    async def get_source(self, source_id: int) -> ProxySource:
        async with self._read() as tx:
            row = await tx.fetchrow(f"SELECT {SOURCE_COLUMNS} FROM sources WHERE id = ?", source_id)
        if row is None:
            raise NotFoundError(f"no source with id {source_id}")
        return source_row(row)

    async def find_source(self, url: str) -> ProxySource | None:
        async with self._read() as tx:
            row = await tx.fetchrow(f"SELECT {SOURCE_COLUMNS} FROM sources WHERE url = ?", url)
        return None if row is None else source_row(row)

    async def list_sources(self) -> list[ProxySource]:
        async with self._read() as tx:
            return [source_row(r) for r in await tx.fetch(f"SELECT {SOURCE_COLUMNS} FROM sources ORDER BY id")]

    async def remove_source(self, source_id: int, *, keep_proxies: bool = False) -> list[int]:
        """Delete a source and, unless ``keep_proxies``, the proxies no other source lists; their ids."""
        async with self._write(Lock.ROW) as tx:
            if await tx.fetchval(f"SELECT id FROM sources WHERE id = ?{self.FOR_UPDATE}", source_id) is None:
                raise NotFoundError(f"no source with id {source_id}")
            orphans: list[int] = []
            if not keep_proxies:
                rows = await tx.fetch(_DELETE_ORPHANS, source_id, source_id, source_id)
                orphans = sorted(int(r[0]) for r in rows)
            await tx.execute("DELETE FROM sources WHERE id = ?", source_id)
            if orphans:
                await tx.notify("deleted", orphans)
            await tx.notify("sources", [source_id])
        return orphans

    async def record_scrape(
        self, source_id: int, *, at: datetime, found: int | None, new: int | None, error: str | None
    ) -> ProxySource:
        async with self._write() as tx:
            if error is None:
                await tx.execute(
                    "UPDATE sources SET last_run_at = ?, last_success_at = ?, last_found = ?, last_new = ?, "
                    "last_error = NULL, consecutive_failures = 0 WHERE id = ?",
                    at.timestamp(), at.timestamp(), found, new, source_id,
                )
            else:
                await tx.execute(
                    "UPDATE sources SET last_run_at = ?, last_error = ?, "
                    "consecutive_failures = consecutive_failures + 1 WHERE id = ?",
                    at.timestamp(), error, source_id,
                )
            await tx.execute(  # kept over time: the source's history
                "INSERT INTO source_scrapes (source_id, at, found, new, error) "
                "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM sources WHERE id = ?)",
                source_id, at.timestamp(), found, new, error, source_id,
            )
            await tx.execute(
                "DELETE FROM source_scrapes WHERE source_id = ? AND id <= ("
                "SELECT id FROM source_scrapes WHERE source_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                source_id, source_id, SCRAPES_KEEP,
            )
        return await self.get_source(source_id)

    async def source_scrapes(self, source_id: int, limit: int = SCRAPES_KEEP) -> list[SourceScrape]:
        """The source's last scrapes, newest first."""
        async with self._read() as tx:
            rows = await tx.fetch(
                "SELECT at, found, new, error FROM source_scrapes WHERE source_id = ? ORDER BY id DESC LIMIT ?",
                source_id, limit,
            )
        return [SourceScrape(dt(r[0]) or datetime.now(UTC), r[1], r[2], r[3]) for r in rows]

    async def source_activity(self) -> dict[int, tuple[int, float | None]]:
        """Per source with an active proxy: how many of the proxies it lists are active, and their median
        latency (None: none measured)."""
        async with self._read() as tx:
            return _activity(await tx.fetch(_ACTIVE_LATENCIES))

    async def record_survival(self, since: datetime, until: datetime) -> None:
        """Count the proxies that reached 1 h / 24 h since their source first listed them in
        ``(since, until]``, and those of them active now, into each source's survival figures."""
        async with self._write() as tx:
            await tx.execute(_SURVIVAL, since.timestamp(), until.timestamp(), *SURVIVAL_MARKS)

    async def record_quality(
        self, *, yields: Sequence[int], at: datetime, quarantine: dict[int, datetime | None]
    ) -> None:
        """Sources with an active proxy at ``at`` (``last_yield_at``); quarantine set (a time) or lifted (None)."""
        if not yields and not quarantine:
            return
        async with self._write() as tx:
            if yields:
                await tx.executemany(
                    "UPDATE sources SET last_yield_at = ? WHERE id = ?", [(at.timestamp(), i) for i in yields]
                )
            if quarantine:
                await tx.executemany(
                    "UPDATE sources SET quarantined_at = ? WHERE id = ?",
                    [(ts(when), i) for i, when in quarantine.items()],
                )
