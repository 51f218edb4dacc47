"""PostgreSQL storage (asyncpg) for several gateway replicas sharing one pool and one ledger.

The same seam, schema versions and SQL as ``SqliteStore`` (the concern modules are shared; ``?``
placeholders become ``$1, $2, ...`` here).  Only what is PostgreSQL's own lives here: a small
connection pool, one replica migrating while the others wait on an advisory lock, the advisory
lock that orders user and ledger writes, ``NOTIFY`` in the writing transaction (``notify.py``),
``unnest`` bulk inserts with ``RETURNING``, and ``SKIP LOCKED`` check claims.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from asyncpg.pool import Pool, PoolConnectionProxy

from pool.models import Proxy, ProxyStatus, UpstreamURL
import pool.store.schema as schema
from pool.store.backend import Lock, Tx
from pool.store.claims import ClaimsMixin
from pool.store.leases import LeasesMixin
from pool.store.notify import Announcer
from pool.store.proxies import ProxiesMixin
from pool.store.records import PROXY_COLUMNS, ChangeHandler, Row, UpsertResult, proxy_row, ts
from pool.store.sources import SourcesMixin
from pool.store.users import UsersMixin

__all__ = ["PostgresStore", "is_postgres_url"]

MIGRATION_LOCK = 0x70726F7879  # "proxy": taken by the one replica that migrates
ACCOUNTS_LOCK = 0x61636374  # "acct": users and ledger writes commit in id order
REPLICA_NAME_LOCK = 0x726E616D  # "rnam": with hashtext(name), held by the live replica of that name


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


Connection = asyncpg.Connection | PoolConnectionProxy | Pool  # what a query runs on


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2, ...`` (the shared SQL has no ``?`` in a literal)."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _m: f"${next(count)}", sql)


class _PostgresTx:
    """``Tx`` over a pool (reads) or one connection in a transaction (writes)."""

    def __init__(self, con: Connection, announcer: Announcer, *, in_transaction: bool) -> None:
        self._con = con
        self._announcer = announcer
        self._in_transaction = in_transaction

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._con.fetch(numbered(sql), *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self._con.fetchrow(numbered(sql), *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._con.fetchval(numbered(sql), *args)

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._con.execute(numbered(sql), *args)  # "UPDATE 1", "INSERT 0 1", ...
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._con.executemany(numbered(sql), list(rows))

    async def insert_ids(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[int]:
        """One ``INSERT ... RETURNING id`` a row (identity ids are not promised to be consecutive)."""
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) RETURNING id"
        return sorted([int(await self.fetchval(sql, *row)) for row in rows])

    async def notify(self, kind: str, ids: Iterable[int] = ()) -> None:
        assert self._in_transaction and not isinstance(self._con, Pool), "announce inside a write transaction"
        await self._announcer.send(self._con, kind, ids)


class PostgresStore(SourcesMixin, ProxiesMixin, UsersMixin, LeasesMixin, ClaimsMixin):
    """The shared store: a small asyncpg pool plus one listening connection."""

    shared = True
    FOR_UPDATE = " FOR UPDATE"
    NO_LIMIT = "ALL"
    LATEST_SEEN = "GREATEST(user_usage.last_seen, excluded.last_seen)"
    DUPLICATE = (asyncpg.UniqueViolationError,)
    REJECTED = (asyncpg.CheckViolationError, asyncpg.ForeignKeyViolationError)

    def __init__(self, pool: Pool, url: str) -> None:
        self._pool = pool
        self.url = url
        self.path = url
        self._announcer = Announcer(url)
        self._name_holder: asyncpg.Connection | None = None

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=5, command_timeout=30)
        store = cls(pool, url)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        if self._name_holder is not None:
            await self._name_holder.close()
            self._name_holder = None
        await self._announcer.close()
        await self._pool.close()

    async def hold_replica_name(self, name: str) -> bool:
        """Hold ``name`` while this store is open: a session advisory lock on a connection of its own,
        which PostgreSQL drops when the process dies (``kill -9`` too); False when a live replica
        holds it.  (Two-key advisory locks never meet the one-key ones above.)"""
        con = await asyncpg.connect(self.url)
        try:
            held = bool(await con.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", REPLICA_NAME_LOCK, name))
        except BaseException:
            await con.close()
            raise
        if not held:
            await con.close()
            return False
        if self._name_holder is not None:
            await self._name_holder.close()
        self._name_holder = con
        return True

    # schema ---------------------------------------------------------------------------------
    async def schema_version(self) -> int:
        async with self._pool.acquire() as con:
            exists = await con.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
            if not exists:
                return 0
            return int(await con.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    async def _migrate(self) -> None:
        async with self._pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = int(await con.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
            steps = schema.PG_MIGRATIONS  # read at call time, so a test can append a step
            if version > len(steps):
                raise RuntimeError(
                    f"database has schema version {version}, newer than this program knows "
                    f"({len(steps)}); upgrade proxy-pool"
                )
            for script in steps[version:]:
                await con.execute(script)
            if version < len(steps):
                await con.execute("DELETE FROM schema_version")
                await con.execute("INSERT INTO schema_version (version) VALUES ($1)", len(steps))

    # the hooks of the concern mixins -------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        yield _PostgresTx(self._pool, self._announcer, in_transaction=False)

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Tx]:
        async with self._pool.acquire() as con, con.transaction(isolation="repeatable_read"):
            yield _PostgresTx(con, self._announcer, in_transaction=True)

    @contextlib.asynccontextmanager
    async def _write(self, lock: Lock = Lock.NONE) -> AsyncIterator[Tx]:
        """A transaction on one pooled connection; ``Lock.ACCOUNTS`` orders user and ledger writes
        (``Lock.ROW`` is the ``FOR UPDATE`` the statements take themselves)."""
        async with self._pool.acquire() as con, con.transaction():
            if lock is Lock.ACCOUNTS:
                await con.execute("SELECT pg_advisory_xact_lock($1)", ACCOUNTS_LOCK)
            yield _PostgresTx(con, self._announcer, in_transaction=True)

    async def _announce(self, kind: str, ids: Sequence[int]) -> None:
        async with self._pool.acquire() as con:
            await self._announcer.send(con, kind, ids)

    def subscribe(self, handler: ChangeHandler) -> None:
        """Call ``handler(kind, ids)`` for every change another process announces."""
        self._announcer.subscribe(handler)

    # what differs from SQLite --------------------------------------------------------------
    async def upsert_proxies(self, source_id: int | None, upstreams: Sequence[UpstreamURL]) -> UpsertResult:
        """Insert what is new (deduplicated on protocol, host, port) in one transaction."""
        unique: dict[tuple[str, str, int], UpstreamURL] = {}
        for up in upstreams:
            unique.setdefault(up.key, up)
        if not unique:
            return UpsertResult(found=0, new=[])
        ups = list(unique.values())
        now = datetime.now(UTC).timestamp()
        async with self._pool.acquire() as con, con.transaction():
            rows = await con.fetch(
                "INSERT INTO proxies (protocol, host, port, username, password, source_id, created_at) "
                "SELECT p, h, n, u, w, $6, $7 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[]) "
                f"AS t(p, h, n, u, w) ON CONFLICT (protocol, host, port) DO NOTHING RETURNING {PROXY_COLUMNS}",
                [u.protocol.value for u in ups], [u.host for u in ups], [u.port for u in ups],
                [u.username for u in ups], [u.password for u in ups], source_id, now,
            )
            new = sorted((proxy_row(r) for r in rows), key=lambda p: p.id)
            if source_id is not None:  # which sources list a proxy: removal and source quality
                await con.execute(
                    "INSERT INTO proxy_sources (proxy_id, source_id, first_seen) "
                    "SELECT p.id, $4, $5 FROM proxies p JOIN unnest($1::text[], $2::text[], $3::int[]) AS t(pr, h, n) "
                    "ON p.protocol = t.pr AND p.host = t.h AND p.port = t.n ON CONFLICT DO NOTHING",
                    [u.protocol.value for u in ups], [u.host for u in ups], [u.port for u in ups], source_id, now,
                )
            if new:
                await self._announcer.send(con, "proxies", [p.id for p in new])
        return UpsertResult(found=len(unique), new=new)

    async def insert_proxies_bulk(self, upstreams: Iterable[UpstreamURL], status: ProxyStatus) -> int:
        """For loading large lists fast (benches, imports): ``unnest`` in slices, existing rows kept."""
        ups = list(upstreams)
        now = datetime.now(UTC).timestamp()
        for start in range(0, len(ups), 20_000):
            chunk = ups[start : start + 20_000]
            await self._pool.execute(
                "INSERT INTO proxies (protocol, host, port, username, password, status, created_at) "
                "SELECT p, h, n, u, w, $6, $7 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[]) "
                "AS t(p, h, n, u, w) ON CONFLICT (protocol, host, port) DO NOTHING",
                [u.protocol.value for u in chunk], [u.host for u in chunk], [u.port for u in chunk],
                [u.username for u in chunk], [u.password for u in chunk], status.value, now,
            )
        return len(ups)

    async def all_proxies(self) -> list[Proxy]:
        proxies: list[Proxy] = []
        async with self._pool.acquire() as con, con.transaction():
            async for row in con.cursor(f"SELECT {PROXY_COLUMNS} FROM proxies ORDER BY id", prefetch=2000):
                proxies.append(proxy_row(row))
        return proxies

    async def get_proxies(self, ids: Sequence[int]) -> list[Proxy]:
        rows = await self._pool.fetch(
            f"SELECT {PROXY_COLUMNS} FROM proxies WHERE id = ANY($1::bigint[]) ORDER BY id", list(ids)
        )
        return [proxy_row(r) for r in rows]

    async def claim_checks(self, proxies: Sequence[Proxy], until: datetime) -> list[int]:
        """The due proxies nobody else holds, now held by us until ``until`` or our result (SKIP LOCKED).

        Only where our view is current (the stored ``last_checked`` is the one we hold): a replica
        that has not heard of another's fresh result yet does not check that proxy again."""
        if not proxies:
            return []
        now = datetime.now(UTC).timestamp()
        rows = await self._pool.fetch(
            "UPDATE proxies SET claimed_until = $3 WHERE id IN ("
            "SELECT p.id FROM proxies p JOIN unnest($1::bigint[], $2::float8[]) AS t(id, seen) ON p.id = t.id "
            "WHERE (p.claimed_until IS NULL OR p.claimed_until < $4) AND "
            "(CASE WHEN t.seen IS NULL THEN p.last_checked IS NULL ELSE abs(p.last_checked - t.seen) < 0.001 END) "
            "FOR UPDATE OF p SKIP LOCKED) RETURNING id",
            [p.id for p in proxies], [ts(p.last_checked) for p in proxies], until.timestamp(), now,
        )
        return sorted(int(r[0]) for r in rows)
