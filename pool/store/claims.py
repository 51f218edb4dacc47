"""Work that one process of several does: a source's scrape and a named pass (``pool_marks``), each
won by a compare-and-set on a time, so replicas need no coordinator.  (Check claims differ per
database: ``SKIP LOCKED`` on PostgreSQL, everything on SQLite; see the backends.)"""

from __future__ import annotations

from datetime import datetime

from pool.store.backend import StoreBackend
from pool.store.records import dt, ts

__all__ = ["ClaimsMixin"]

# within a millisecond: the value went through a datetime (microseconds) on its way; the CAST tells
# PostgreSQL the type of a parameter that may be NULL
_CLAIM_SOURCE = (
    "UPDATE sources SET last_run_at = ? WHERE id = ? AND "
    "(CASE WHEN CAST(? AS DOUBLE PRECISION) IS NULL THEN last_run_at IS NULL "
    "ELSE abs(last_run_at - ?) < 0.001 END)"
)


class ClaimsMixin(StoreBackend):
    """Compare-and-set claims, for either database."""

    async def claim_source(self, source_id: int, last_run_at: datetime | None, at: datetime) -> bool:
        """Mark the source as run at ``at`` if nobody did since ``last_run_at``: the winner scrapes it."""
        async with self._write() as tx:
            changed = await tx.execute(_CLAIM_SOURCE, at.timestamp(), source_id, ts(last_run_at), ts(last_run_at))
        return changed == 1

    async def get_mark(self, name: str) -> datetime | None:
        async with self._read() as tx:
            return dt(await tx.fetchval("SELECT at FROM pool_marks WHERE name = ?", name))

    async def claim_mark(self, name: str, last: datetime | None, at: datetime) -> bool:
        """Move mark ``name`` from ``last`` to ``at`` if nobody did since: the winner runs that pass."""
        async with self._write() as tx:
            if last is None:
                changed = await tx.execute(
                    "INSERT INTO pool_marks (name, at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", name, at.timestamp()
                )
            else:
                changed = await tx.execute(
                    "UPDATE pool_marks SET at = ? WHERE name = ? AND abs(at - ?) < 0.001",
                    at.timestamp(), name, last.timestamp(),
                )
        return changed == 1
