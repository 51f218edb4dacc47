"""Storage: the only package that writes SQL.

``Store`` (``seam.py``) is the seam; ``SqliteStore`` (``sqlite.py``) is the embedded default and
``PostgresStore`` (``postgres.py``) the shared one for replicas.  The SQL both run is written once,
one module per concern: ``schema`` (migrations), ``sources`` (sources and their quality),
``proxies`` (the pool and its check log), ``users`` (users, ledger, usage), ``leases`` (credit
leases) and ``claims`` (work one replica of several does).  Rows go in and out as the typed
records of ``records.py`` and the models of ``pool.models``; no policy lives here.
"""

from pool.store.records import (
    CHECK_LOG_KEEP,
    SCRAPES_KEEP,
    ChangeHandler,
    CreditState,
    LedgerEntry,
    ProxyFilter,
    Settlement,
    SourceScrape,
    UpsertResult,
    UsageRow,
    UserRecord,
)
from pool.store.schema import MIGRATIONS, PG_MIGRATIONS
from pool.store.seam import Store
from pool.store.sqlite import SqliteStore

__all__ = [
    "CHECK_LOG_KEEP",
    "MIGRATIONS",
    "PG_MIGRATIONS",
    "SCRAPES_KEEP",
    "ChangeHandler",
    "CreditState",
    "LedgerEntry",
    "ProxyFilter",
    "Settlement",
    "SourceScrape",
    "SqliteStore",
    "Store",
    "UpsertResult",
    "UsageRow",
    "UserRecord",
]
