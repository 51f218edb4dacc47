"""The proxy pool's rows: reading and listing proxies, writing check results and the check log.

(Inserting scraped proxies differs per database, as it must report exactly the new rows: see the
backends' ``upsert_proxies``.)"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pool.errors import NotFoundError
from pool.models import Proxy, ProxyCheck
from pool.store.backend import StoreBackend
from pool.store.records import CHECK_LOG_KEEP, PROXY_COLUMNS, ProxyFilter, dt, proxy_row, ts

__all__ = ["ProxiesMixin"]

_EVERY = ProxyFilter()


class ProxiesMixin(StoreBackend):
    """The proxies half of the seam, for either database."""

    async def get_proxy(self, proxy_id: int) -> Proxy:
        async with self._read() as tx:
            row = await tx.fetchrow(f"SELECT {PROXY_COLUMNS} FROM proxies WHERE id = ?", proxy_id)
        if row is None:
            raise NotFoundError(f"no proxy with id {proxy_id}")
        return proxy_row(row)

    async def list_proxies(
        self, flt: ProxyFilter = _EVERY, limit: int | None = None, offset: int = 0
    ) -> tuple[list[Proxy], int]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("status", flt.status), ("protocol", flt.protocol), ("anonymity", flt.anonymity)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        if flt.country is not None:  # ISO codes: ASCII, so lower() is the case-blind compare in both
            where.append("lower(country) = lower(?)")
            args.append(flt.country)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        page = f" LIMIT {int(limit)}" if limit is not None else (f" LIMIT {self.NO_LIMIT}" if offset else "")
        page += f" OFFSET {int(offset)}" if offset else ""
        async with self._read() as tx:
            total = int(await tx.fetchval(f"SELECT COUNT(*) FROM proxies{clause}", *args))
            rows = await tx.fetch(f"SELECT {PROXY_COLUMNS} FROM proxies{clause} ORDER BY id{page}", *args)
        return [proxy_row(r) for r in rows], total

    async def save_results(self, results: Sequence[tuple[Proxy, Sequence[ProxyCheck]]]) -> None:
        """Write the figures of checked proxies (releasing their check claims) and their check-log
        rows in one transaction."""
        if not results:
            return
        checks = [
            (c.proxy_id, c.checker, c.stage, int(c.passed), c.detail, c.latency_ms, c.at.timestamp(), c.proxy_id)
            for _, cs in results
            for c in cs
        ]
        async with self._write() as tx:
            await tx.executemany(
                "UPDATE proxies SET status = ?, latency_ms = ?, success_ratio = ?, last_checked = ?, "
                "consecutive_failures = ?, exit_ip = ?, anonymity = ?, country = ?, dead_since = ?, "
                "check_history = ?, tunnels = ?, claimed_until = NULL WHERE id = ?",
                [
                    (
                        p.status.value, p.latency_ms, p.success_ratio, ts(p.last_checked), p.consecutive_failures,
                        p.exit_ip, p.anonymity.value if p.anonymity else None, p.country, ts(p.dead_since),
                        p.check_history, None if p.tunnels is None else int(p.tunnels), p.id,
                    )
                    for p, _ in results
                ],
            )
            if checks:
                await tx.executemany(
                    "INSERT INTO proxy_checks (proxy_id, checker, stage, passed, detail, latency_ms, at) "
                    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM proxies WHERE id = ?)",
                    checks,
                )
            await tx.executemany(
                "DELETE FROM proxy_checks WHERE proxy_id = ? AND id <= ("
                "SELECT id FROM proxy_checks WHERE proxy_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                [(p.id, p.id, CHECK_LOG_KEEP) for p, _ in results],
            )
            await tx.notify("proxies", sorted({p.id for p, _ in results}))

    async def delete_proxies(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self._write() as tx:
            await tx.executemany("DELETE FROM proxies WHERE id = ?", [(i,) for i in ids])
            await tx.notify("deleted", list(ids))

    async def get_checks(self, proxy_id: int, limit: int = CHECK_LOG_KEEP) -> list[ProxyCheck]:
        await self.get_proxy(proxy_id)  # 404 for an unknown id
        async with self._read() as tx:
            rows = await tx.fetch(
                "SELECT proxy_id, checker, stage, passed, detail, latency_ms, at FROM proxy_checks "
                "WHERE proxy_id = ? ORDER BY id DESC LIMIT ?",
                proxy_id, limit,
            )
        return [ProxyCheck(r[0], r[1], r[2], bool(r[3]), r[4], r[5], dt(r[6]) or datetime.now(UTC)) for r in rows]
