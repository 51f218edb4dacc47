"""Storage: the only module that writes SQL.

``Store`` is the seam (a small async interface); ``SqliteStore`` is the embedded default (aiosqlite,
WAL).  A PostgreSQL implementation for several gateways sharing one pool takes the same seam.
Rows go in and out as the typed models of ``pool.models``; no policy lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from pool.errors import DuplicateError, InvalidInputError, NotFoundError
from pool.models import (
    AnonymityLevel,
    Proxy,
    ProxyCheck,
    ProxyProtocol,
    ProxySource,
    ProxyStatus,
    UpstreamURL,
    masked_url,
)

__all__ = [
    "ChangeHandler",
    "CreditState",
    "LedgerEntry",
    "MIGRATIONS",
    "ProxyFilter",
    "Settlement",
    "SourceScrape",
    "SqliteStore",
    "Store",
    "UpsertResult",
    "UsageRow",
    "UserRecord",
]


MIGRATIONS: list[str] = [
    # 1: sources, proxies, the check log
    """
    CREATE TABLE sources (
        id INTEGER PRIMARY KEY,
        url TEXT NOT NULL UNIQUE,
        parser TEXT,
        schedule TEXT,
        default_protocol TEXT NOT NULL DEFAULT 'http',
        origin TEXT NOT NULL DEFAULT 'user',
        created_at REAL NOT NULL,
        last_run_at REAL,
        last_success_at REAL,
        last_found INTEGER,
        last_new INTEGER,
        last_error TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE proxies (
        id INTEGER PRIMARY KEY,
        protocol TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        username TEXT,
        password TEXT,
        status TEXT NOT NULL DEFAULT 'new',
        source_id INTEGER REFERENCES sources(id) ON DELETE SET NULL,
        latency_ms REAL,
        success_ratio REAL,
        last_checked REAL,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        exit_ip TEXT,
        anonymity TEXT,
        country TEXT,
        created_at REAL NOT NULL,
        dead_since REAL,
        check_history TEXT NOT NULL DEFAULT '',
        UNIQUE (protocol, host, port)
    );
    CREATE INDEX proxies_status ON proxies(status);
    CREATE TABLE proxy_checks (
        id INTEGER PRIMARY KEY,
        proxy_id INTEGER NOT NULL REFERENCES proxies(id) ON DELETE CASCADE,
        checker TEXT NOT NULL,
        stage INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        detail TEXT NOT NULL,
        latency_ms REAL,
        at REAL NOT NULL
    );
    CREATE INDEX proxy_checks_proxy ON proxy_checks(proxy_id, id);
    """,
    # 2: gateway users and their credit ledger (balance = SUM(delta); rev orders user changes)
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        password_changed_at REAL NOT NULL,
        rev INTEGER NOT NULL
    );
    CREATE INDEX users_rev ON users(rev);
    CREATE TABLE credit_ledger (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        delta INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (
            (kind = 'credit' AND delta > 0) OR (kind = 'spend' AND delta < 0) OR (kind = 'refund' AND delta > 0)
        ),
        at REAL NOT NULL
    );
    CREATE INDEX credit_ledger_user ON credit_ledger(user_id);
    """,
    # 3: whether a proxy carries CONNECT (NULL: not known yet); see plugins/builtin/checkers/tls_tunnel.py
    """
    ALTER TABLE proxies ADD COLUMN tunnels INTEGER;
    """,
    # 4: credit leases (replicas charge from blocks leased out of users.balance, the unleased credits:
    # SUM(ledger) = balance + SUM(leases)) and check claims (one replica checks a due proxy)
    """
    ALTER TABLE users ADD COLUMN balance INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0);
    UPDATE users SET balance = (SELECT COALESCE(SUM(delta), 0) FROM credit_ledger WHERE user_id = users.id);
    CREATE TABLE credit_leases (
        replica TEXT NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        amount INTEGER NOT NULL CHECK (amount >= 0),
        PRIMARY KEY (replica, user_id)
    );
    ALTER TABLE proxies ADD COLUMN claimed_until REAL;
    """,
    # 5: source quality (pool/quality.py): which sources list a proxy (first_seen: when that source first
    # did), each source's last scrapes, survival counts, last yield, quarantine; pool_marks for passes
    # that one replica runs (compare-and-set on ``at``)
    """
    CREATE TABLE proxy_sources (
        proxy_id INTEGER NOT NULL REFERENCES proxies(id) ON DELETE CASCADE,
        source_id INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
        first_seen REAL NOT NULL,
        PRIMARY KEY (proxy_id, source_id)
    );
    CREATE INDEX proxy_sources_source ON proxy_sources(source_id);
    INSERT INTO proxy_sources (proxy_id, source_id, first_seen)
        SELECT id, source_id, created_at FROM proxies WHERE source_id IS NOT NULL;
    CREATE TABLE source_scrapes (
        id INTEGER PRIMARY KEY,
        source_id INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
        at REAL NOT NULL,
        found INTEGER,
        new INTEGER,
        error TEXT
    );
    CREATE INDEX source_scrapes_source ON source_scrapes(source_id, id);
    ALTER TABLE sources ADD COLUMN last_yield_at REAL;
    ALTER TABLE sources ADD COLUMN quarantined_at REAL;
    ALTER TABLE sources ADD COLUMN seen_1h INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sources ADD COLUMN survived_1h INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sources ADD COLUMN seen_24h INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sources ADD COLUMN survived_24h INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE pool_marks (name TEXT PRIMARY KEY, at REAL NOT NULL);
    """,
    # 6: the user life cycle (enabled, per-user limits, soft removal) and per-user usage counters (every
    # replica adds its increments)
    """
    ALTER TABLE users ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE users ADD COLUMN max_connections INTEGER;
    ALTER TABLE users ADD COLUMN max_requests_per_second REAL;
    ALTER TABLE users ADD COLUMN removed_at REAL;
    CREATE TABLE user_usage (
        user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        requests INTEGER NOT NULL DEFAULT 0,
        tunnels INTEGER NOT NULL DEFAULT 0,
        bytes_up INTEGER NOT NULL DEFAULT 0,
        bytes_down INTEGER NOT NULL DEFAULT 0,
        last_seen REAL
    );
    """,
]

CHECK_LOG_KEEP = 50  # check rows kept per proxy
SCRAPES_KEEP = 100  # scrape rows kept per source (its history in GET /api/sources/{id})
SURVIVAL_MARKS = (3600.0, 86400.0)  # seconds after a source first listed a proxy: survival_1h, survival_24h


@dataclass(frozen=True)
class ProxyFilter:
    status: ProxyStatus | None = None
    protocol: ProxyProtocol | None = None
    country: str | None = None
    anonymity: AnonymityLevel | None = None


@dataclass(frozen=True)
class SourceScrape:
    """One scrape of a source, kept over time (the last ``SCRAPES_KEEP``)."""

    at: datetime
    found: int | None
    new: int | None
    error: str | None

    def public_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "found": self.found, "new": self.new, "error": self.error}


@dataclass(frozen=True)
class UpsertResult:
    found: int
    new: list[Proxy]


@dataclass(frozen=True)
class UserRecord:
    """A gateway user as stored; ``balance`` is the sum of the user's ledger rows when read."""

    id: int
    name: str
    password_hash: str
    created_at: datetime
    password_changed_at: datetime
    rev: int
    balance: int
    enabled: bool = True
    max_connections: int | None = None
    max_requests_per_second: float | None = None
    removed: bool = False  # only ``users_since`` returns removed users (so a gateway drops them)


@dataclass(frozen=True)
class UsageRow:
    """A user's usage counters (or, written, an increment of them); ``last_seen`` a Unix time."""

    user_id: int
    requests: int = 0
    tunnels: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    last_seen: float | None = None


USER_CHANGES = frozenset({"enabled", "max_connections", "max_requests_per_second"})


@dataclass(frozen=True)
class CreditState:
    """A user's credits as the database sees them: ``free`` can be leased, ``total`` includes leases."""

    user_id: int
    free: int
    total: int


@dataclass(frozen=True)
class Settlement:
    """What a replica reports for one user: charged and refunded since its last report, lease given back."""

    user_id: int
    spent: int = 0
    refunded: int = 0
    returned: int = 0


ChangeHandler = Callable[[str, list[int]], None]  # (kind, ids): proxies | deleted | users | sources | credits | resync


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    user_id: int
    delta: int
    kind: str  # credit | spend | refund
    at: datetime


class Store(Protocol):
    """The storage seam.  Everything the rest of the program may ask of a database."""

    async def close(self) -> None: ...

    async def add_source(
        self, url: str, *, parser: str | None, schedule: str | None, default_protocol: ProxyProtocol, origin: str
    ) -> ProxySource: ...
    async def get_source(self, source_id: int) -> ProxySource: ...
    async def find_source(self, url: str) -> ProxySource | None: ...
    async def list_sources(self) -> list[ProxySource]: ...
    async def remove_source(self, source_id: int, *, keep_proxies: bool = False) -> list[int]: ...
    async def record_scrape(
        self, source_id: int, *, at: datetime, found: int | None, new: int | None, error: str | None
    ) -> ProxySource: ...
    async def source_scrapes(self, source_id: int, limit: int = SCRAPES_KEEP) -> list[SourceScrape]: ...
    async def source_activity(self) -> dict[int, tuple[int, float | None]]: ...
    async def record_survival(self, since: datetime, until: datetime) -> None: ...
    async def record_quality(
        self, *, yields: Sequence[int], at: datetime, quarantine: dict[int, datetime | None]
    ) -> None: ...
    async def get_mark(self, name: str) -> datetime | None: ...
    async def claim_mark(self, name: str, last: datetime | None, at: datetime) -> bool: ...

    async def upsert_proxies(self, source_id: int | None, upstreams: Sequence[UpstreamURL]) -> UpsertResult: ...
    async def insert_proxies_bulk(self, upstreams: Iterable[UpstreamURL], status: ProxyStatus) -> int: ...
    async def all_proxies(self) -> list[Proxy]: ...
    async def get_proxy(self, proxy_id: int) -> Proxy: ...
    async def list_proxies(self, flt: ProxyFilter, limit: int | None, offset: int) -> tuple[list[Proxy], int]: ...
    async def save_results(self, results: Sequence[tuple[Proxy, Sequence[ProxyCheck]]]) -> None: ...
    async def delete_proxies(self, ids: Sequence[int]) -> None: ...
    async def get_checks(self, proxy_id: int, limit: int = CHECK_LOG_KEEP) -> list[ProxyCheck]: ...

    # users and credits
    async def add_user(self, name: str, password_hash: str, credits: int) -> UserRecord: ...
    async def get_user(self, name: str) -> UserRecord: ...
    async def list_users(self) -> list[UserRecord]: ...
    async def set_password(self, name: str, password_hash: str) -> UserRecord: ...
    async def users_since(self, rev: int, ledger_upto: int | None = None) -> list[UserRecord]: ...
    async def append_ledger(self, entries: Sequence[tuple[int, int, str]]) -> list[int]: ...
    async def ledger_since(self, after_id: int, user_id: int | None = None) -> list[LedgerEntry]: ...
    async def ledger_state(self) -> tuple[list[UserRecord], int]: ...
    async def update_user(self, name: str, **changes: Any) -> UserRecord: ...
    async def remove_user(self, name: str) -> UserRecord: ...
    async def debit_credits(self, user_id: int, want: int) -> int: ...
    async def add_usage(self, rows: Sequence[UsageRow]) -> None: ...
    async def usage(self) -> dict[int, UsageRow]: ...

    # replicas: shared is True when several processes may serve from this database at once
    shared: bool

    async def lease_credits(self, replica: str, user_id: int, want: int) -> int: ...
    async def ask_credits(self, user_ids: Sequence[int], *, recall: bool = False) -> None: ...
    async def settle_credits(self, replica: str, rows: Sequence[Settlement]) -> list[int]: ...
    async def settle_stale_leases(self, replica: str | None, *, forfeit: bool) -> int: ...
    async def credit_state(self) -> list[CreditState]: ...
    async def claim_source(self, source_id: int, last_run_at: datetime | None, at: datetime) -> bool: ...
    async def claim_checks(self, proxies: Sequence[Proxy], until: datetime) -> list[int]: ...
    async def get_proxies(self, ids: Sequence[int]) -> list[Proxy]: ...
    def subscribe(self, handler: ChangeHandler) -> None: ...


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


_PROXY_COLUMNS = (
    "id, protocol, host, port, username, password, status, source_id, latency_ms, success_ratio, "
    "last_checked, consecutive_failures, exit_ip, anonymity, country, created_at, dead_since, check_history, "
    "tunnels"
)


def _proxy(row: sqlite3.Row | tuple[Any, ...]) -> Proxy:
    return Proxy(
        id=row[0],
        upstream=UpstreamURL(ProxyProtocol(row[1]), row[2], row[3], row[4], row[5]),
        status=ProxyStatus(row[6]),
        source_id=row[7],
        latency_ms=row[8],
        success_ratio=row[9],
        last_checked=_dt(row[10]),
        consecutive_failures=row[11],
        exit_ip=row[12],
        anonymity=AnonymityLevel(row[13]) if row[13] else None,
        # a few hundred distinct values across the pool: one string each instead of one per proxy
        country=sys.intern(row[14]) if row[14] else None,
        created_at=_dt(row[15]) or datetime.now(UTC),
        dead_since=_dt(row[16]),
        check_history=sys.intern(row[17]),
        tunnels=None if row[18] is None else bool(row[18]),
    )


_SOURCE_COLUMNS = (
    "id, url, parser, schedule, default_protocol, origin, created_at, last_run_at, last_success_at, "
    "last_found, last_new, last_error, consecutive_failures, last_yield_at, quarantined_at, "
    "seen_1h, survived_1h, seen_24h, survived_24h"
)


def _source(row: sqlite3.Row | tuple[Any, ...]) -> ProxySource:
    return ProxySource(
        id=row[0],
        url=row[1],
        parser=row[2],
        schedule=row[3],
        default_protocol=ProxyProtocol(row[4]),
        origin=row[5],
        created_at=_dt(row[6]) or datetime.now(UTC),
        last_run_at=_dt(row[7]),
        last_success_at=_dt(row[8]),
        last_found=row[9],
        last_new=row[10],
        last_error=row[11],
        consecutive_failures=row[12],
        last_yield_at=_dt(row[13]),
        quarantined_at=_dt(row[14]),
        seen_1h=row[15],
        survived_1h=row[16],
        seen_24h=row[17],
        survived_24h=row[18],
    )


# the proxies a source lists (or brought first) that no other source lists: they go with it
_ORPHANS = (
    "SELECT p.id FROM proxies p WHERE (p.source_id = ? OR EXISTS (SELECT 1 FROM proxy_sources s "
    "WHERE s.proxy_id = p.id AND s.source_id = ?)) AND NOT EXISTS (SELECT 1 FROM proxy_sources s "
    "WHERE s.proxy_id = p.id AND s.source_id != ?) ORDER BY p.id"
)
# every active proxy's latency per listing source (a window-function median in SQL measured 2x slower
# on SQLite for 50,000 active proxies: ~400 ms against ~170 ms, ~15 ms of it grouping on the event loop)
_ACTIVE_LATENCIES = (
    "SELECT s.source_id, p.latency_ms FROM proxy_sources s JOIN proxies p ON p.id = s.proxy_id "
    "WHERE p.status = 'active'"
)


def _activity(rows: Iterable[Sequence[Any]]) -> dict[int, tuple[int, float | None]]:
    """``(source_id, latency_ms)`` rows -> per source: active count and median measured latency."""
    latencies: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    for source_id, latency in rows:
        counts[source_id] = counts.get(source_id, 0) + 1
        if latency is not None:
            latencies.setdefault(source_id, []).append(latency)
    return {
        int(i): (n, statistics.median(latencies[i]) if i in latencies else None) for i, n in counts.items()
    }


def _crossed(mark: str, active: bool) -> str:
    """How many of a source's links reached ``first_seen + mark`` in (since, until] (and are active)."""
    join = " JOIN proxies p ON p.id = s.proxy_id AND p.status = 'active'" if active else ""
    return (
        f"(SELECT COUNT(*) FROM proxy_sources s{join} WHERE s.source_id = sources.id "
        f"AND s.first_seen + :{mark} > :since AND s.first_seen + :{mark} <= :until)"
    )


_SURVIVAL = (
    f"UPDATE sources SET seen_1h = seen_1h + {_crossed('m0', False)}, "
    f"survived_1h = survived_1h + {_crossed('m0', True)}, "
    f"seen_24h = seen_24h + {_crossed('m1', False)}, "
    f"survived_24h = survived_24h + {_crossed('m1', True)}"
)


class SqliteStore:
    """The embedded store.  One connection; aiosqlite runs it on its own thread.

    One serving process per file (``shared`` is False): it leases every credit it sees, its claims
    always succeed, and nobody else's changes need announcing (the CLI's are read on each flush).
    """

    shared = False

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path
        self._write_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _transaction(self, *, immediate: bool = False) -> AsyncIterator[None]:
        """The one write frame: under the write lock, committed when the block ends, rolled back on any error.

        ``immediate`` takes SQLite's write lock at BEGIN, so a reader in another process (the CLI) cannot
        slip a write between our read and our update.
        """
        async with self._write_lock:
            try:
                if immediate and not self._db.in_transaction:
                    await self._db.execute("BEGIN IMMEDIATE")
                yield
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            store = cls(db, path)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        version = await self.schema_version()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database {self.path} has schema version {version}, newer than this program knows "
                f"({len(MIGRATIONS)}); upgrade proxy-pool"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            try:
                await self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            except sqlite3.OperationalError:
                # two processes opening a new database at once: the one that lost the race finds the
                # step applied by the other (its own attempt rolled back), and goes on from there
                await self._db.rollback()
                if await self.schema_version() >= number:
                    continue
                raise

    # sources ------------------------------------------------------------------------------
    async def add_source(
        self,
        url: str,
        *,
        parser: str | None = None,
        schedule: str | None = None,
        default_protocol: ProxyProtocol = ProxyProtocol.HTTP,
        origin: str = "user",
    ) -> ProxySource:
        now = datetime.now(UTC)
        async with self._write_lock:
            try:
                cur = await self._db.execute(
                    "INSERT INTO sources (url, parser, schedule, default_protocol, origin, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (url, parser, schedule, ProxyProtocol(default_protocol).value, origin, now.timestamp()),
                )
            except sqlite3.IntegrityError:
                raise DuplicateError(f"source {masked_url(url)} already exists") from None
            await self._db.commit()
        assert cur.lastrowid is not None
        return await self.get_source(cur.lastrowid)

    async def get_source(self, source_id: int) -> ProxySource:
        async with self._db.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE id = ?", (source_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no source with id {source_id}")
        return _source(row)

    async def find_source(self, url: str) -> ProxySource | None:
        async with self._db.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE url = ?", (url,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _source(row)

    async def list_sources(self) -> list[ProxySource]:
        async with self._db.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources ORDER BY id") as cur:
            return [_source(row) for row in await cur.fetchall()]

    async def remove_source(self, source_id: int, *, keep_proxies: bool = False) -> list[int]:
        """Delete a source and, unless ``keep_proxies``, the proxies no other source lists; their ids."""
        async with self._transaction(immediate=True):
            orphans: list[int] = []
            if not keep_proxies:
                async with self._db.execute(_ORPHANS, (source_id, source_id, source_id)) as cur:
                    orphans = [int(r[0]) for r in await cur.fetchall()]
                await self._db.executemany("DELETE FROM proxies WHERE id = ?", [(i,) for i in orphans])
            cur = await self._db.execute("DELETE FROM sources WHERE id = ?", (source_id,))
            if cur.rowcount == 0:
                raise NotFoundError(f"no source with id {source_id}")
        return orphans

    async def record_scrape(
        self, source_id: int, *, at: datetime, found: int | None, new: int | None, error: str | None
    ) -> ProxySource:
        async with self._write_lock:
            if error is None:
                await self._db.execute(
                    "UPDATE sources SET last_run_at = ?, last_success_at = ?, last_found = ?, last_new = ?, "
                    "last_error = NULL, consecutive_failures = 0 WHERE id = ?",
                    (at.timestamp(), at.timestamp(), found, new, source_id),
                )
            else:
                await self._db.execute(
                    "UPDATE sources SET last_run_at = ?, last_error = ?, "
                    "consecutive_failures = consecutive_failures + 1 WHERE id = ?",
                    (at.timestamp(), error, source_id),
                )
            await self._db.execute(  # kept over time: the source's history
                "INSERT INTO source_scrapes (source_id, at, found, new, error) "
                "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM sources WHERE id = ?)",
                (source_id, at.timestamp(), found, new, error, source_id),
            )
            await self._db.execute(
                "DELETE FROM source_scrapes WHERE source_id = ? AND id <= ("
                "SELECT id FROM source_scrapes WHERE source_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (source_id, source_id, SCRAPES_KEEP),
            )
            await self._db.commit()
        return await self.get_source(source_id)

    async def source_scrapes(self, source_id: int, limit: int = SCRAPES_KEEP) -> list[SourceScrape]:
        """The source's last scrapes, newest first."""
        async with self._db.execute(
            "SELECT at, found, new, error FROM source_scrapes WHERE source_id = ? ORDER BY id DESC LIMIT ?",
            (source_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [SourceScrape(_dt(r[0]) or datetime.now(UTC), r[1], r[2], r[3]) for r in rows]

    async def source_activity(self) -> dict[int, tuple[int, float | None]]:
        """Per source with an active proxy: how many of the proxies it lists are active, and their median
        latency (None: none measured)."""
        async with self._db.execute(_ACTIVE_LATENCIES) as cur:
            return _activity(await cur.fetchall())

    async def record_survival(self, since: datetime, until: datetime) -> None:
        """Count the proxies that reached 1 h / 24 h since their source first listed them in
        ``(since, until]``, and those of them active now, into each source's survival figures."""
        marks = {f"m{i}": m for i, m in enumerate(SURVIVAL_MARKS)}
        async with self._write_lock:
            await self._db.execute(_SURVIVAL, {"since": since.timestamp(), "until": until.timestamp(), **marks})
            await self._db.commit()

    async def record_quality(
        self, *, yields: Sequence[int], at: datetime, quarantine: dict[int, datetime | None]
    ) -> None:
        """Sources with an active proxy at ``at`` (``last_yield_at``); quarantine set (a time) or lifted (None)."""
        if not yields and not quarantine:
            return
        async with self._write_lock:
            await self._db.executemany(
                "UPDATE sources SET last_yield_at = ? WHERE id = ?", [(at.timestamp(), i) for i in yields]
            )
            await self._db.executemany(
                "UPDATE sources SET quarantined_at = ? WHERE id = ?",
                [(_ts(when), i) for i, when in quarantine.items()],
            )
            await self._db.commit()

    async def get_mark(self, name: str) -> datetime | None:
        async with self._db.execute("SELECT at FROM pool_marks WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _dt(row[0])

    async def claim_mark(self, name: str, last: datetime | None, at: datetime) -> bool:
        """Move mark ``name`` from ``last`` to ``at`` if nobody did since: the winner runs that pass."""
        async with self._write_lock:
            if last is None:
                cur = await self._db.execute(
                    "INSERT INTO pool_marks (name, at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING", (name, at.timestamp())
                )
            else:
                cur = await self._db.execute(
                    "UPDATE pool_marks SET at = ? WHERE name = ? AND abs(at - ?) < 0.001",
                    (at.timestamp(), name, last.timestamp()),
                )
            await self._db.commit()
        return cur.rowcount == 1

    # proxies ------------------------------------------------------------------------------
    async def upsert_proxies(self, source_id: int | None, upstreams: Sequence[UpstreamURL]) -> UpsertResult:
        """Insert what is new (deduplicated on protocol, host, port) in one transaction."""
        unique: dict[tuple[str, str, int], UpstreamURL] = {}
        for up in upstreams:
            unique.setdefault(up.key, up)
        now = datetime.now(UTC).timestamp()
        rows = [(u.protocol.value, u.host, u.port, u.username, u.password, source_id, now) for u in unique.values()]
        async with self._transaction():
            # rowids grow past the old maximum, so "id > before" is exactly what this call inserted
            async with self._db.execute("SELECT COALESCE(MAX(id), 0) FROM proxies") as cur:
                row = await cur.fetchone()
            before = int(row[0]) if row else 0
            await self._db.executemany(
                "INSERT OR IGNORE INTO proxies (protocol, host, port, username, password, source_id, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            async with self._db.execute(
                f"SELECT {_PROXY_COLUMNS} FROM proxies WHERE id > ? ORDER BY id", (before,)
            ) as cur:
                new = [_proxy(r) for r in await cur.fetchall()]
            if source_id is not None:  # which sources list a proxy: removal and source quality
                await self._db.executemany(
                    "INSERT OR IGNORE INTO proxy_sources (proxy_id, source_id, first_seen) "
                    "SELECT id, ?, ? FROM proxies WHERE protocol = ? AND host = ? AND port = ?",
                    [(source_id, now, u.protocol.value, u.host, u.port) for u in unique.values()],
                )
        return UpsertResult(found=len(unique), new=new)

    async def insert_proxies_bulk(self, upstreams: Iterable[UpstreamURL], status: ProxyStatus) -> int:
        """For loading large lists fast (benches, imports): one executemany, existing rows kept."""
        now = datetime.now(UTC).timestamp()
        rows = [
            (u.protocol.value, u.host, u.port, u.username, u.password, status.value, now) for u in upstreams
        ]
        async with self._write_lock:
            await self._db.executemany(
                "INSERT OR IGNORE INTO proxies (protocol, host, port, username, password, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            await self._db.commit()
        return len(rows)

    async def all_proxies(self) -> list[Proxy]:
        proxies: list[Proxy] = []
        async with self._db.execute(f"SELECT {_PROXY_COLUMNS} FROM proxies ORDER BY id") as cur:
            # in slices: the raw rows of a 100,000-proxy pool never all live at once (peak memory at start)
            while rows := await cur.fetchmany(2000):
                proxies.extend(_proxy(row) for row in rows)
        return proxies

    async def get_proxy(self, proxy_id: int) -> Proxy:
        async with self._db.execute(f"SELECT {_PROXY_COLUMNS} FROM proxies WHERE id = ?", (proxy_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no proxy with id {proxy_id}")
        return _proxy(row)

    async def list_proxies(
        self, flt: ProxyFilter = ProxyFilter(), limit: int | None = None, offset: int = 0
    ) -> tuple[list[Proxy], int]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("status", flt.status),
            ("protocol", flt.protocol),
            ("anonymity", flt.anonymity),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        if flt.country is not None:
            where.append("country = ? COLLATE NOCASE")
            args.append(flt.country)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        async with self._db.execute(f"SELECT COUNT(*) FROM proxies{clause}", args) as cur:
            row = await cur.fetchone()
        total = int(row[0]) if row else 0
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else (
            f" LIMIT -1 OFFSET {int(offset)}" if offset else ""
        )
        async with self._db.execute(f"SELECT {_PROXY_COLUMNS} FROM proxies{clause} ORDER BY id{page}", args) as cur:
            return [_proxy(row) for row in await cur.fetchall()], total

    async def save_results(self, results: Sequence[tuple[Proxy, Sequence[ProxyCheck]]]) -> None:
        """Write the figures of checked proxies and their check-log rows in one transaction."""
        if not results:
            return
        async with self._transaction():
            await self._db.executemany(
                "UPDATE proxies SET status = ?, latency_ms = ?, success_ratio = ?, last_checked = ?, "
                "consecutive_failures = ?, exit_ip = ?, anonymity = ?, country = ?, dead_since = ?, "
                "check_history = ?, tunnels = ? WHERE id = ?",
                [
                    (
                        p.status.value,
                        p.latency_ms,
                        p.success_ratio,
                        _ts(p.last_checked),
                        p.consecutive_failures,
                        p.exit_ip,
                        p.anonymity.value if p.anonymity else None,
                        p.country,
                        _ts(p.dead_since),
                        p.check_history,
                        None if p.tunnels is None else int(p.tunnels),
                        p.id,
                    )
                    for p, _ in results
                ],
            )
            await self._db.executemany(
                "INSERT INTO proxy_checks (proxy_id, checker, stage, passed, detail, latency_ms, at) "
                "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM proxies WHERE id = ?)",
                [
                    (c.proxy_id, c.checker, c.stage, int(c.passed), c.detail, c.latency_ms, c.at.timestamp(),
                     c.proxy_id)
                    for _, checks in results
                    for c in checks
                ],
            )
            await self._db.executemany(
                "DELETE FROM proxy_checks WHERE proxy_id = ? AND id <= ("
                "SELECT id FROM proxy_checks WHERE proxy_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                [(p.id, p.id, CHECK_LOG_KEEP) for p, _ in results],
            )

    async def delete_proxies(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self._write_lock:
            await self._db.executemany("DELETE FROM proxies WHERE id = ?", [(i,) for i in ids])
            await self._db.commit()

    async def get_checks(self, proxy_id: int, limit: int = CHECK_LOG_KEEP) -> list[ProxyCheck]:
        await self.get_proxy(proxy_id)  # 404 for an unknown id
        async with self._db.execute(
            "SELECT proxy_id, checker, stage, passed, detail, latency_ms, at FROM proxy_checks "
            "WHERE proxy_id = ? ORDER BY id DESC LIMIT ?",
            (proxy_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [
            ProxyCheck(r[0], r[1], r[2], bool(r[3]), r[4], r[5], _dt(r[6]) or datetime.now(UTC)) for r in rows
        ]

    # users and credits --------------------------------------------------------------------
    # ``rev`` grows with every insert and password change, so a running gateway can pick up
    # users changed by another process (``users_since``) without trusting clocks.

    _USER_SELECT = (
        "SELECT u.id, u.name, u.password_hash, u.created_at, u.password_changed_at, u.rev, "
        "COALESCE((SELECT SUM(l.delta) FROM credit_ledger l WHERE l.user_id = u.id AND l.id <= ?), 0), "
        "u.enabled, u.max_connections, u.max_requests_per_second, u.removed_at "
        "FROM users u"
    )
    _NEXT_REV = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM users)"
    _ALL = 2**62  # "every ledger row" for the l.id <= ? bound above

    @staticmethod
    def _user(row: sqlite3.Row | tuple[Any, ...]) -> UserRecord:
        return UserRecord(
            id=row[0],
            name=row[1],
            password_hash=row[2],
            created_at=_dt(row[3]) or datetime.now(UTC),
            password_changed_at=_dt(row[4]) or datetime.now(UTC),
            rev=row[5],
            balance=int(row[6]),
            enabled=bool(row[7]),
            max_connections=row[8],
            max_requests_per_second=row[9],
            removed=row[10] is not None,
        )

    async def add_user(self, name: str, password_hash: str, credits: int) -> UserRecord:
        """The user and, when ``credits`` > 0, its first ledger row, in one transaction."""
        now = datetime.now(UTC).timestamp()
        try:
            async with self._transaction():
                cur = await self._db.execute(
                    "INSERT INTO users (name, password_hash, created_at, password_changed_at, rev, balance) "
                    "VALUES (?, ?, ?, ?, (SELECT COALESCE(MAX(rev), 0) + 1 FROM users), ?)",
                    (name, password_hash, now, now, max(credits, 0)),
                )
                if credits > 0:
                    await self._db.execute(
                        "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, 'credit', ?)",
                        (cur.lastrowid, credits, now),
                    )
        except sqlite3.IntegrityError:
            raise DuplicateError(f"user {name!r} already exists") from None
        return await self.get_user(name)

    async def get_user(self, name: str) -> UserRecord:
        async with self._db.execute(
            f"{self._USER_SELECT} WHERE u.name = ? AND u.removed_at IS NULL", (self._ALL, name)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no user named {name!r}")
        return self._user(row)

    async def list_users(self) -> list[UserRecord]:
        async with self._db.execute(
            f"{self._USER_SELECT} WHERE u.removed_at IS NULL ORDER BY u.id", (self._ALL,)
        ) as cur:
            return [self._user(row) for row in await cur.fetchall()]

    async def set_password(self, name: str, password_hash: str) -> UserRecord:
        now = datetime.now(UTC).timestamp()
        async with self._write_lock:
            cur = await self._db.execute(
                "UPDATE users SET password_hash = ?, password_changed_at = ?, "
                "rev = (SELECT COALESCE(MAX(rev), 0) + 1 FROM users) WHERE name = ? AND removed_at IS NULL",
                (password_hash, now, name),
            )
            await self._db.commit()
        if cur.rowcount == 0:
            raise NotFoundError(f"no user named {name!r}")
        return await self.get_user(name)

    async def users_since(self, rev: int, ledger_upto: int | None = None) -> list[UserRecord]:
        """Users added or changed after ``rev``, oldest change first; balances summed up to a row id."""
        bound = self._ALL if ledger_upto is None else ledger_upto
        async with self._db.execute(f"{self._USER_SELECT} WHERE u.rev > ? ORDER BY u.rev", (bound, rev)) as cur:
            return [self._user(row) for row in await cur.fetchall()]

    async def append_ledger(self, entries: Sequence[tuple[int, int, str]]) -> list[int]:
        """Insert ``(user_id, delta, kind)`` rows in one transaction; returns their ids."""
        if not entries:
            return []
        now = datetime.now(UTC).timestamp()
        try:
            # IMMEDIATE takes the write lock first, so no other process inserts between
            # reading the last id and our rows: "id > before" is exactly ours
            async with self._transaction(immediate=True):
                async with self._db.execute("SELECT COALESCE(MAX(id), 0) FROM credit_ledger") as cur:
                    row = await cur.fetchone()
                before = int(row[0]) if row else 0
                await self._db.executemany(
                    "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, ?, ?)",
                    [(user_id, delta, kind, now) for user_id, delta, kind in entries],
                )
                await self._db.executemany(  # top-ups (and debits) change the unleased credits
                    "UPDATE users SET balance = balance + ? WHERE id = ?",
                    [(delta, user_id) for user_id, delta, _ in entries],
                )
                async with self._db.execute("SELECT id FROM credit_ledger WHERE id > ? ORDER BY id", (before,)) as cur:
                    ids = [int(r[0]) for r in await cur.fetchall()]
        except sqlite3.IntegrityError as exc:
            raise InvalidInputError(f"ledger row rejected: {exc}") from None
        return ids

    async def ledger_since(self, after_id: int, user_id: int | None = None) -> list[LedgerEntry]:
        """Ledger rows after ``after_id`` (all of one user's with ``user_id``), oldest first."""
        where, args = "id > ?", [after_id]
        if user_id is not None:
            where += " AND user_id = ?"
            args.append(user_id)
        async with self._db.execute(
            f"SELECT id, user_id, delta, kind, at FROM credit_ledger WHERE {where} ORDER BY id", args
        ) as cur:
            rows = await cur.fetchall()
        return [LedgerEntry(r[0], r[1], r[2], r[3], _dt(r[4]) or datetime.now(UTC)) for r in rows]

    async def ledger_state(self) -> tuple[list[UserRecord], int]:
        """Every user with the balance rebuilt from the ledger up to the returned last row id."""
        async with self._db.execute("SELECT COALESCE(MAX(id), 0) FROM credit_ledger") as cur:
            row = await cur.fetchone()
        last = int(row[0]) if row else 0
        async with self._db.execute(f"{self._USER_SELECT} WHERE u.removed_at IS NULL ORDER BY u.id", (last,)) as cur:
            users = [self._user(r) for r in await cur.fetchall()]
        return users, last

    async def update_user(self, name: str, **changes: Any) -> UserRecord:
        """Set ``enabled`` / per-user limits (None lifts a limit); bumps ``rev`` so gateways pick it up."""
        unknown = set(changes) - USER_CHANGES
        if unknown or not changes:
            raise InvalidInputError(f"unknown user field(s): {', '.join(sorted(unknown)) or '(none given)'}")
        sets = [f"{column} = ?" for column in changes]
        args = [int(v) if isinstance(v, bool) else v for v in changes.values()]
        async with self._write_lock:
            cur = await self._db.execute(
                f"UPDATE users SET {', '.join([*sets, f'rev = {self._NEXT_REV}'])} "
                "WHERE name = ? AND removed_at IS NULL",
                (*args, name),
            )
            await self._db.commit()
        if cur.rowcount == 0:
            raise NotFoundError(f"no user named {name!r}")
        return await self.get_user(name)

    async def remove_user(self, name: str) -> UserRecord:
        """Soft removal: the row (and its ledger, for the books) stays under a name no user can have
        (``~ID~NAME``), so the name is free again and ``rev`` tells gateways to drop the user."""
        record = await self.get_user(name)
        now = datetime.now(UTC).timestamp()
        async with self._write_lock:
            cur = await self._db.execute(
                f"UPDATE users SET removed_at = ?, enabled = 0, name = '~' || id || '~' || name, "
                f"rev = {self._NEXT_REV} WHERE id = ? AND removed_at IS NULL",
                (now, record.id),
            )
            await self._db.commit()
        if cur.rowcount == 0:
            raise NotFoundError(f"no user named {name!r}")
        return record

    async def debit_credits(self, user_id: int, want: int) -> int:
        """Take up to ``want`` of the user's unleased credits (a ``spend`` row); returns how many."""
        if want <= 0:
            return 0
        now = datetime.now(UTC).timestamp()
        async with self._transaction(immediate=True):
            async with self._db.execute("SELECT balance FROM users WHERE id = ?", (user_id,)) as cur:
                row = await cur.fetchone()
            taken = min(int(row[0]), want) if row else 0
            if taken > 0:
                await self._db.execute("UPDATE users SET balance = balance - ? WHERE id = ?", (taken, user_id))
                await self._db.execute(
                    "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, 'spend', ?)",
                    (user_id, -taken, now),
                )
        return taken

    async def add_usage(self, rows: Sequence[UsageRow]) -> None:
        """Add increments to the usage counters (one transaction); ``last_seen`` keeps the latest."""
        if not rows:
            return
        async with self._write_lock:
            await self._db.executemany(
                "INSERT INTO user_usage (user_id, requests, tunnels, bytes_up, bytes_down, last_seen) "
                "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM users WHERE id = ?) "
                "ON CONFLICT (user_id) DO UPDATE SET requests = requests + excluded.requests, "
                "tunnels = tunnels + excluded.tunnels, bytes_up = bytes_up + excluded.bytes_up, "
                "bytes_down = bytes_down + excluded.bytes_down, "
                "last_seen = MAX(COALESCE(last_seen, 0), COALESCE(excluded.last_seen, 0))",
                [(r.user_id, r.requests, r.tunnels, r.bytes_up, r.bytes_down, r.last_seen, r.user_id) for r in rows],
            )
            await self._db.commit()

    async def usage(self) -> dict[int, UsageRow]:
        async with self._db.execute(
            "SELECT user_id, requests, tunnels, bytes_up, bytes_down, last_seen FROM user_usage"
        ) as cur:
            return {r[0]: UsageRow(r[0], r[1], r[2], r[3], r[4], r[5] or None) for r in await cur.fetchall()}


    # replicas (a single owner here: the same answers as PostgreSQL gives one replica) ------------
    async def lease_credits(self, replica: str, user_id: int, want: int) -> int:
        """Move up to ``want`` unleased credits into ``replica``'s lease; returns how many moved."""
        if want <= 0:
            return 0
        async with self._transaction(immediate=True):
            async with self._db.execute("SELECT balance FROM users WHERE id = ?", (user_id,)) as cur:
                row = await cur.fetchone()
            taken = min(int(row[0]), want) if row else 0
            if taken > 0:
                await self._db.execute("UPDATE users SET balance = balance - ? WHERE id = ?", (taken, user_id))
                await self._db.execute(
                    "INSERT INTO credit_leases (replica, user_id, amount) VALUES (?, ?, ?) "
                    "ON CONFLICT (replica, user_id) DO UPDATE SET amount = amount + excluded.amount",
                    (replica, user_id, taken),
                )
        return taken

    async def settle_credits(self, replica: str, rows: Sequence[Settlement]) -> list[int]:
        """Spends and refunds as ledger rows, out of the lease; ``returned`` goes back to the user."""
        rows = [r for r in rows if r.spent or r.refunded or r.returned]
        if not rows:
            return []
        now = datetime.now(UTC).timestamp()
        try:
            async with self._transaction(immediate=True):
                async with self._db.execute("SELECT COALESCE(MAX(id), 0) FROM credit_ledger") as cur:
                    row = await cur.fetchone()
                before = int(row[0]) if row else 0
                ledger = [(r.user_id, -r.spent, "spend", now) for r in rows if r.spent] + [
                    (r.user_id, r.refunded, "refund", now) for r in rows if r.refunded
                ]
                await self._db.executemany(
                    "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, ?, ?)", ledger
                )
                for r in rows:
                    await self._db.execute(
                        "UPDATE credit_leases SET amount = amount - ? WHERE replica = ? AND user_id = ?",
                        (r.spent - r.refunded + r.returned, replica, r.user_id),
                    )
                    if r.returned:
                        await self._db.execute(
                            "UPDATE users SET balance = balance + ? WHERE id = ?", (r.returned, r.user_id)
                        )
                await self._db.execute("DELETE FROM credit_leases WHERE amount = 0")
                async with self._db.execute("SELECT id FROM credit_ledger WHERE id > ? ORDER BY id", (before,)) as cur:
                    ids = [int(r[0]) for r in await cur.fetchall()]
        except sqlite3.IntegrityError as exc:
            raise InvalidInputError(f"settlement rejected: {exc}") from None
        return ids

    async def settle_stale_leases(self, replica: str | None, *, forfeit: bool) -> int:
        """Leases left by a replica that died (``None``: by anyone): spent (forfeit) or given back."""
        async with self._transaction(immediate=True):
            where, args = ("", ()) if replica is None else (" WHERE replica = ?", (replica,))
            async with self._db.execute(f"SELECT user_id, amount FROM credit_leases{where}", args) as cur:
                leases = [(int(r[0]), int(r[1])) for r in await cur.fetchall()]
            now = datetime.now(UTC).timestamp()
            for user_id, amount in leases:
                if amount <= 0:
                    continue
                if forfeit:
                    await self._db.execute(
                        "INSERT INTO credit_ledger (user_id, delta, kind, at) VALUES (?, ?, 'spend', ?)",
                        (user_id, -amount, now),
                    )
                else:
                    await self._db.execute("UPDATE users SET balance = balance + ? WHERE id = ?", (amount, user_id))
            await self._db.execute(f"DELETE FROM credit_leases{where}", args)
        return sum(a for _, a in leases)

    async def credit_state(self) -> list[CreditState]:
        async with self._db.execute(
            "SELECT u.id, u.balance, u.balance + COALESCE((SELECT SUM(amount) FROM credit_leases l "
            "WHERE l.user_id = u.id), 0) FROM users u ORDER BY u.id"
        ) as cur:
            return [CreditState(int(r[0]), int(r[1]), int(r[2])) for r in await cur.fetchall()]

    async def claim_source(self, source_id: int, last_run_at: datetime | None, at: datetime) -> bool:
        """Mark the source as run at ``at`` if nobody did since ``last_run_at``: the winner scrapes it."""
        async with self._write_lock:
            cur = await self._db.execute(
                # within a millisecond: the value went through a datetime (microseconds) on its way
                "UPDATE sources SET last_run_at = ? WHERE id = ? AND "
                "(CASE WHEN ? IS NULL THEN last_run_at IS NULL ELSE abs(last_run_at - ?) < 0.001 END)",
                (at.timestamp(), source_id, _ts(last_run_at), _ts(last_run_at)),
            )
            await self._db.commit()
        return cur.rowcount == 1

    async def claim_checks(self, proxies: Sequence[Proxy], until: datetime) -> list[int]:
        return [p.id for p in proxies]  # one process checks everything it finds due

    async def ask_credits(self, user_ids: Sequence[int], *, recall: bool = False) -> None:
        """Nobody else holds a lease here."""

    async def get_proxies(self, ids: Sequence[int]) -> list[Proxy]:
        found: list[Proxy] = []
        ids = list(ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(
                f"SELECT {_PROXY_COLUMNS} FROM proxies WHERE id IN ({marks}) ORDER BY id", chunk
            ) as cur:
                found.extend(_proxy(r) for r in await cur.fetchall())
        return found

    def subscribe(self, handler: ChangeHandler) -> None:
        """Nothing to hear: nobody else serves from this file."""
