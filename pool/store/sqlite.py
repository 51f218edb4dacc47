"""The embedded store: SQLite through aiosqlite (one connection on its own thread, WAL).

Only what is SQLite's own lives here: opening and migrating the file (``PRAGMA user_version``), the
write lock and ``BEGIN IMMEDIATE``, bulk inserts that find their rows by rowid, and the replica
questions a single serving process answers alone.  The workers of ``serve --workers N`` open the file
``shared``: then every write takes the write lock at BEGIN, and the changes the others must hear go
through ``pool_changes`` (``feed.py``), SQLite's stand-in for NOTIFY.  The SQL both databases share
is in the concern modules this class mixes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from pool.dbfiles import make_private
from pool.models import Proxy, ProxyStatus, UpstreamURL
import pool.store.schema as schema
from pool.store.backend import Lock, Tx
from pool.store.claims import ClaimsMixin
from pool.store.feed import ChangeFeed
from pool.store.leases import LeasesMixin
from pool.store.proxies import ProxiesMixin
from pool.store.records import PROXY_COLUMNS, ChangeHandler, Row, UpsertResult, proxy_row
from pool.store.sources import SourcesMixin
from pool.store.users import UsersMixin

__all__ = ["SqliteStore"]


class _SqliteTx:
    """``Tx`` over the one aiosqlite connection."""

    def __init__(self, db: aiosqlite.Connection, feed: ChangeFeed | None) -> None:
        self._db = db
        self._feed = feed

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._db.execute(sql, args) as cur:
            rows = list(await cur.fetchall())  # to the end: a RETURNING statement has run all of its writes
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._db.execute(sql, args) as cur:
            return cur.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._db.executemany(sql, rows)

    async def insert_ids(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[int]:
        """One executemany; rowids grow past the old maximum, so "id > before" is exactly ours (the
        caller holds the write lock from BEGIN IMMEDIATE: no other process inserts in between)."""
        before = int(await self.fetchval(f"SELECT COALESCE(MAX(id), 0) FROM {table}"))
        marks = ", ".join("?" * len(columns))
        await self._db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        return [int(r[0]) for r in await self.fetch(f"SELECT id FROM {table} WHERE id > ? ORDER BY id", before)]

    async def notify(self, kind: str, ids: Iterable[int] = ()) -> None:
        """A ``pool_changes`` row for the other workers; alone on the file, nobody to tell (the CLI's
        changes are read at each flush)."""
        if self._feed is not None:
            await self._feed.send(self, kind, ids)


class SqliteStore(SourcesMixin, ProxiesMixin, UsersMixin, LeasesMixin, ClaimsMixin):
    """The embedded store.  One connection; aiosqlite runs it on its own thread.

    One serving process per file (``shared`` False): it leases every credit it sees, its claims
    always succeed, and nobody else's changes need announcing (the CLI's are read on each flush).
    The workers of one pool (``shared`` True) lease in blocks and announce their changes, as replicas
    on PostgreSQL do; one of them (the leader, ``pool.dbfiles.LeaderLock``) checks, so its check
    claims still always succeed.
    """

    FOR_UPDATE = ""  # BEGIN IMMEDIATE holds the whole file
    NO_LIMIT = "-1"
    LATEST_SEEN = "MAX(COALESCE(user_usage.last_seen, 0), COALESCE(excluded.last_seen, 0))"
    DUPLICATE = (sqlite3.IntegrityError,)
    REJECTED = (sqlite3.IntegrityError,)

    def __init__(self, db: aiosqlite.Connection, path: str, *, shared: bool = False) -> None:
        self._db = db
        self.path = path
        self.shared = shared
        self._write_lock = asyncio.Lock()
        self._feed = ChangeFeed(db, self._write_lock) if shared else None
        self._tx = _SqliteTx(db, self._feed)

    @classmethod
    async def open(cls, path: str | Path, *, shared: bool = False) -> SqliteStore:
        """Open (and migrate) the file; ``shared``: as one worker of several serving it."""
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            make_private(Path(path))
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db, path, shared=shared)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def hold_replica_name(self, name: str) -> bool:
        """Always granted: one pool serves a SQLite file (its serve lock), its workers named apart."""
        return True

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.close()
        await self._db.close()

    # schema ---------------------------------------------------------------------------------
    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        steps = schema.MIGRATIONS  # read at call time, so a test can append a step
        version = await self.schema_version()
        if version > len(steps):
            raise RuntimeError(
                f"database {self.path} has schema version {version}, newer than this program knows "
                f"({len(steps)}); upgrade proxy-pool"
            )
        for number, script in enumerate(steps[version:], start=version + 1):
            try:
                await self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            except sqlite3.OperationalError:
                # two processes opening a new database at once: the one that lost the race finds the
                # step applied by the other (its own attempt rolled back), and goes on from there
                await self._db.rollback()
                if await self.schema_version() >= number:
                    continue
                raise

    # the hooks of the concern mixins -------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        yield self._tx

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Tx]:
        yield self._tx  # one connection, and our own writes wait on the event loop meanwhile

    @contextlib.asynccontextmanager
    async def _write(self, lock: Lock = Lock.NONE) -> AsyncIterator[Tx]:
        """The one write frame: under the write lock, committed when the block ends, rolled back on any error.

        A ``lock`` takes SQLite's write lock at BEGIN (IMMEDIATE), so a reader in another process (the
        CLI) cannot slip a write between our read and our update; a shared store takes it for every
        write (the other workers write all the time, and a read that is then upgraded to a write could
        fail busy at once instead of waiting).
        """
        async with self._write_lock:
            try:
                if (lock is not Lock.NONE or self.shared) and not self._db.in_transaction:
                    await self._db.execute("BEGIN IMMEDIATE")
                yield self._tx
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise

    async def _announce(self, kind: str, ids: Sequence[int]) -> None:
        """A row for the other workers (alone on the file: nobody else holds a lease here)."""
        if self._feed is not None:
            async with self._write() as tx:
                await tx.notify(kind, ids)

    def subscribe(self, handler: ChangeHandler) -> None:
        """The other workers' changes (alone on the file: nothing to hear)."""
        if self._feed is not None:
            self._feed.subscribe(handler)

    # what differs from PostgreSQL ----------------------------------------------------------
    async def upsert_proxies(self, source_id: int | None, upstreams: Sequence[UpstreamURL]) -> UpsertResult:
        """Insert what is new (deduplicated on protocol, host, port) in one transaction."""
        unique: dict[tuple[str, str, int], UpstreamURL] = {}
        for up in upstreams:
            unique.setdefault(up.key, up)
        now = datetime.now(UTC).timestamp()
        rows = [(u.protocol.value, u.host, u.port, u.username, u.password, source_id, now) for u in unique.values()]
        async with self._write() as tx:
            # rowids grow past the old maximum, so "id > before" is exactly what this call inserted
            before = int(await tx.fetchval("SELECT COALESCE(MAX(id), 0) FROM proxies"))
            await tx.executemany(
                "INSERT OR IGNORE INTO proxies (protocol, host, port, username, password, source_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            new = [proxy_row(r) for r in await tx.fetch(f"SELECT {PROXY_COLUMNS} FROM proxies WHERE id > ? ORDER BY id", before)]
            if source_id is not None:  # which sources list a proxy: removal and source quality
                await tx.executemany(
                    "INSERT OR IGNORE INTO proxy_sources (proxy_id, source_id, first_seen) "
                    "SELECT id, ?, ? FROM proxies WHERE protocol = ? AND host = ? AND port = ?",
                    [(source_id, now, u.protocol.value, u.host, u.port) for u in unique.values()],
                )
            if new:
                await tx.notify("proxies", [p.id for p in new])
        return UpsertResult(found=len(unique), new=new)

    async def insert_proxies_bulk(self, upstreams: Iterable[UpstreamURL], status: ProxyStatus) -> int:
        """For loading large lists fast (benches, imports): one executemany, existing rows kept."""
        now = datetime.now(UTC).timestamp()
        rows = [(u.protocol.value, u.host, u.port, u.username, u.password, status.value, now) for u in upstreams]
        async with self._write() as tx:
            await tx.executemany(
                "INSERT OR IGNORE INTO proxies (protocol, host, port, username, password, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    async def all_proxies(self) -> list[Proxy]:
        proxies: list[Proxy] = []
        async with self._db.execute(f"SELECT {PROXY_COLUMNS} FROM proxies ORDER BY id") as cur:
            # in slices: the raw rows of a 100,000-proxy pool never all live at once (peak memory at start)
            while rows := await cur.fetchmany(2000):
                proxies.extend(proxy_row(row) for row in rows)
        return proxies

    async def get_proxies(self, ids: Sequence[int]) -> list[Proxy]:
        found: list[Proxy] = []
        ids = list(ids)
        for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._tx.fetch(f"SELECT {PROXY_COLUMNS} FROM proxies WHERE id IN ({marks}) ORDER BY id", *chunk)
            found.extend(proxy_row(r) for r in rows)
        return found

    async def claim_checks(self, proxies: Sequence[Proxy], until: datetime) -> list[int]:
        return [p.id for p in proxies]  # one process (the only one, or the workers' leader) checks what is due
