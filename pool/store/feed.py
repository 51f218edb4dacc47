"""Change announcements between the workers of one SQLite file (``serve --workers N``).

SQLite has no LISTEN/NOTIFY.  A write the other workers must see adds a ``pool_changes`` row in the
writing transaction (``origin``, ``kind``, the ids: never rows), so it is seen exactly when it
commits.  Each worker follows in the background, never on a request's path: every ``POLL`` seconds it
reads ``PRAGMA data_version`` (a number that moves only when another connection commits; no query of
the table otherwise) and, when it moved, the rows past the last one it saw.  Row ids are consecutive
(one writer at a time, the newest row never pruned), so a gap means rows were pruned before this
worker read them (it stalled for ``KEEP`` seconds): it asks its owner for a full ``resync``, as a
PostgreSQL listener does after a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable

import aiosqlite

from pool.store.backend import Tx
from pool.store.records import ChangeHandler
from pool.tasks import TaskSet

__all__ = ["KEEP", "POLL", "ChangeFeed"]

log = logging.getLogger("proxy_pool.store")

POLL = 0.2  # seconds between looks at PRAGMA data_version: a change reaches every worker within ~POLL
KEEP = 120.0  # seconds a row is kept for followers
PRUNE_EVERY = 64  # rows written between prunes


class ChangeFeed:
    """Sends our changes (inside the writer's transaction) and follows the other workers'."""

    def __init__(self, db: aiosqlite.Connection, write_lock: asyncio.Lock) -> None:
        self._db = db
        self._write_lock = write_lock  # held while reading: never inside a transaction of ours
        self._origin = secrets.token_hex(4)  # tells our own rows from the others'
        self._handlers: list[ChangeHandler] = []
        self._tasks = TaskSet()
        self._follower: asyncio.Task[None] | None = None
        self._sent = 0
        self.following = asyncio.Event()  # set once the follower knows where it starts (tests wait on it)

    async def close(self) -> None:
        await self._tasks.close()

    async def send(self, tx: Tx, kind: str, ids: Iterable[int] = ()) -> None:
        """One row, inside the caller's write transaction ``tx`` (committed, or rolled back, with it)."""
        now = time.time()
        await tx.execute(
            "INSERT INTO pool_changes (origin, kind, ids, at) VALUES (?, ?, ?, ?)",
            self._origin, kind, ",".join(str(i) for i in ids), now,
        )
        self._sent += 1
        if self._sent % PRUNE_EVERY == 0:  # the newest row stays: ids never go back (followers rely on it)
            await tx.execute(
                "DELETE FROM pool_changes WHERE at < ? AND id < (SELECT MAX(id) FROM pool_changes)", now - KEEP
            )

    def subscribe(self, handler: ChangeHandler) -> None:
        """Call ``handler(kind, ids)`` for every change another worker writes."""
        self._handlers.append(handler)
        if self._follower is None:
            self._follower = self._tasks.spawn(self._follow(), name="sqlite-follow")

    def _dispatch(self, kind: str, ids: list[int]) -> None:
        for handler in list(self._handlers):
            try:
                handler(kind, ids)
            except Exception:
                log.exception("change handler failed on %s", kind)

    async def _fetch(self, sql: str, *args: object) -> list[aiosqlite.Row]:
        async with self._write_lock, self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _follow(self) -> None:
        ((version, last),) = await self._fetch(
            "SELECT (SELECT data_version FROM pragma_data_version), COALESCE(MAX(id), 0) FROM pool_changes"
        )
        self.following.set()
        while True:
            await asyncio.sleep(POLL)
            try:
                ((now,),) = await self._fetch("PRAGMA data_version")
                if now == version:
                    continue
                version = now
                rows = await self._fetch(
                    "SELECT id, origin, kind, ids FROM pool_changes WHERE id > ? ORDER BY id", last
                )
            except Exception as exc:  # noqa: BLE001  (a busy or broken file: keep serving, look again)
                log.warning("could not read the other workers' changes (%s); retrying", exc)
                continue
            if not rows:
                continue
            if rows[0][0] != last + 1:
                log.warning("fell behind the other workers' changes (pruned before read): full resync")
                self._dispatch("resync", [])
            last = rows[-1][0]
            for _id, origin, kind, text in rows:
                if origin != self._origin:
                    self._dispatch(kind, [int(x) for x in text.split(",") if x])
