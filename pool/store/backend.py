"""What the concern modules ask of a database backend: a small executor and a few dialect words.

The SQL of ``sources``, ``proxies``, ``users``, ``leases`` and ``claims`` is written once with ``?``
placeholders; a backend runs it through a ``Tx`` (PostgreSQL renders ``?`` as ``$1, $2, ...``).  Only
what really differs between the databases lives in a backend: connections and write locking, the
bulk inserts that must report what they inserted, ``SKIP LOCKED`` claims, ``NOTIFY``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from enum import Enum
from typing import Any, ClassVar, Protocol

from pool.store.records import Row

__all__ = ["Lock", "StoreBackend", "Tx"]


class Tx(Protocol):
    """One connection (inside a transaction when written through ``_write``)."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; how many rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    async def insert_ids(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert ``rows`` into ``table``; their ids, ascending."""
        ...

    async def notify(self, kind: str, ids: Iterable[int] = ()) -> None:
        """Tell the other processes on this database, when this transaction commits (or a no-op)."""
        ...


class Lock(Enum):
    """How a write transaction keeps others out.

    ``ROW``: a read-then-update of one row (SQLite: the write lock from BEGIN; PostgreSQL: the row's
    lock, taken by ``FOR UPDATE`` in the statement).  ``ACCOUNTS``: users and ledger rows, whose ids
    and ``rev`` values must commit in order (SQLite: the same; PostgreSQL: one advisory lock).
    """

    NONE = "none"
    ROW = "row"
    ACCOUNTS = "accounts"


class StoreBackend(abc.ABC):
    """The hooks and dialect words every concern mixin uses; a backend class fills them in."""

    FOR_UPDATE: ClassVar[str]  # appended to a SELECT whose row is then updated
    NO_LIMIT: ClassVar[str]  # LIMIT that means "all" (SQLite needs a LIMIT before OFFSET)
    LATEST_SEEN: ClassVar[str]  # the later of user_usage.last_seen and excluded.last_seen
    DUPLICATE: ClassVar[tuple[type[Exception], ...]]  # a UNIQUE constraint refused the row
    REJECTED: ClassVar[tuple[type[Exception], ...]]  # a CHECK or FOREIGN KEY constraint refused it

    @abc.abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Tx]:
        """A connection for reads (no transaction of ours)."""

    @abc.abstractmethod
    def _write(self, lock: Lock = Lock.NONE) -> AbstractAsyncContextManager[Tx]:
        """A write transaction: committed when the block ends, rolled back on any error."""

    @abc.abstractmethod
    def _snapshot(self) -> AbstractAsyncContextManager[Tx]:
        """Reads that must see one state of the database together."""

    @abc.abstractmethod
    async def _announce(self, kind: str, ids: Sequence[int]) -> None:
        """Tell the other processes something outside any write (a no-op with no others)."""
