"""The typed rows that go in and out of a store, and how a database row becomes one.

Shared by both backends: the column lists and the row readers are written once, so a column added
by a migration is read the same way from SQLite and from PostgreSQL.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pool.models import AnonymityLevel, Proxy, ProxyProtocol, ProxySource, ProxyStatus, UpstreamURL

__all__ = [
    "CHECK_LOG_KEEP",
    "SCRAPES_KEEP",
    "SURVIVAL_MARKS",
    "USER_CHANGES",
    "ChangeHandler",
    "CreditState",
    "LedgerEntry",
    "ProxyFilter",
    "Settlement",
    "SourceScrape",
    "UpsertResult",
    "UsageRow",
    "UserRecord",
]

CHECK_LOG_KEEP = 50  # check rows kept per proxy
SCRAPES_KEEP = 100  # scrape rows kept per source (its history in GET /api/sources/{id})
SURVIVAL_MARKS = (3600.0, 86400.0)  # seconds after a source first listed a proxy: survival_1h, survival_24h
USER_CHANGES = frozenset({"enabled", "max_connections", "max_requests_per_second"})

ChangeHandler = Callable[[str, list[int]], None]  # (kind, ids): proxies | deleted | users | sources | credits | resync


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


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    user_id: int
    delta: int
    kind: str  # credit | spend | refund
    at: datetime


# database rows -> records ----------------------------------------------------------------------
# Times are stored as Unix seconds (REAL / DOUBLE PRECISION) in both databases.
class Row(Protocol):
    """A result row of either driver (a tuple, ``sqlite3.Row``, ``asyncpg.Record``): read by position."""

    def __getitem__(self, index: int, /) -> Any: ...


def ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


PROXY_COLUMNS = (
    "id, protocol, host, port, username, password, status, source_id, latency_ms, success_ratio, "
    "last_checked, consecutive_failures, exit_ip, anonymity, country, created_at, dead_since, check_history, "
    "tunnels"
)


def proxy_row(row: Row) -> Proxy:
    return Proxy(
        id=row[0],
        upstream=UpstreamURL(ProxyProtocol(row[1]), row[2], row[3], row[4], row[5]),
        status=ProxyStatus(row[6]),
        source_id=row[7],
        latency_ms=row[8],
        success_ratio=row[9],
        last_checked=dt(row[10]),
        consecutive_failures=row[11],
        exit_ip=row[12],
        anonymity=AnonymityLevel(row[13]) if row[13] else None,
        # a few hundred distinct values across the pool: one string each instead of one per proxy
        country=sys.intern(row[14]) if row[14] else None,
        created_at=dt(row[15]) or datetime.now(UTC),
        dead_since=dt(row[16]),
        check_history=sys.intern(row[17]),
        tunnels=None if row[18] is None else bool(row[18]),
    )


SOURCE_COLUMNS = (
    "id, url, parser, schedule, default_protocol, origin, created_at, last_run_at, last_success_at, "
    "last_found, last_new, last_error, consecutive_failures, last_yield_at, quarantined_at, "
    "seen_1h, survived_1h, seen_24h, survived_24h"
)


def source_row(row: Row) -> ProxySource:
    return ProxySource(
        id=row[0],
        url=row[1],
        parser=row[2],
        schedule=row[3],
        default_protocol=ProxyProtocol(row[4]),
        origin=row[5],
        created_at=dt(row[6]) or datetime.now(UTC),
        last_run_at=dt(row[7]),
        last_success_at=dt(row[8]),
        last_found=row[9],
        last_new=row[10],
        last_error=row[11],
        consecutive_failures=row[12],
        last_yield_at=dt(row[13]),
        quarantined_at=dt(row[14]),
        seen_1h=row[15],
        survived_1h=row[16],
        seen_24h=row[17],
        survived_24h=row[18],
    )


# the balance is the ledger summed up to a row id (the one ``?``), so a reader can pair users with
# "every ledger row up to N" and follow the rows after N
USER_SELECT = (
    "SELECT u.id, u.name, u.password_hash, u.created_at, u.password_changed_at, u.rev, "
    "COALESCE((SELECT SUM(l.delta) FROM credit_ledger l WHERE l.user_id = u.id AND l.id <= ?), 0), "
    "u.enabled, u.max_connections, u.max_requests_per_second, u.removed_at "
    "FROM users u"
)
ALL_ROWS = 2**62  # "every ledger row" for the l.id <= ? bound above
LEDGER_COLUMNS = ("user_id", "delta", "kind", "at")


def user_row(row: Row) -> UserRecord:
    return UserRecord(
        id=row[0],
        name=row[1],
        password_hash=row[2],
        created_at=dt(row[3]) or datetime.now(UTC),
        password_changed_at=dt(row[4]) or datetime.now(UTC),
        rev=row[5],
        balance=int(row[6]),
        enabled=bool(row[7]),
        max_connections=row[8],
        max_requests_per_second=row[9],
        removed=row[10] is not None,
    )
