"""Change announcements between replicas on one PostgreSQL database (``NOTIFY proxy_pool``).

Writes that other replicas must see are announced in the writing transaction with small payloads
(``token:kind:id,id,...``, chunked under the 8000-byte limit) carrying ids, never rows; a listener
that lost its connection reconnects and asks its owner for a full ``resync``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from pool.store.records import ChangeHandler
from pool.tasks import TaskSet

__all__ = ["CHANNEL", "Announcer", "payloads"]

log = logging.getLogger("proxy_pool.store")

CHANNEL = "proxy_pool"
_PAYLOAD_MAX = 7000  # NOTIFY payloads must stay under 8000 bytes


def payloads(token: str, kind: str, ids: Iterable[int]) -> list[str]:
    """``token:kind:1,2,3`` messages, each under the NOTIFY size limit."""
    head = f"{token}:{kind}:"
    out: list[str] = []
    current: list[str] = []
    size = len(head)
    for i in ids:
        text = str(i)
        if current and size + len(text) + 1 > _PAYLOAD_MAX:
            out.append(head + ",".join(current))
            current, size = [], len(head)
        current.append(text)
        size += len(text) + 1
    if current or not out:
        out.append(head + ",".join(current))
    return out


class Announcer:
    """Sends our changes and hears the others' (one LISTEN connection, started on first subscribe)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._token = secrets.token_hex(4)  # tells our own notifications from the others'
        self._handlers: list[ChangeHandler] = []
        self._listener: asyncio.Task[None] | None = None
        self._tasks = TaskSet()
        self.listening: asyncio.Event | None = None  # set while LISTEN is in place (tests wait on it)
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        await self._tasks.close()

    async def send(self, con: asyncpg.Connection | PoolConnectionProxy, kind: str, ids: Iterable[int] = ()) -> None:
        """Announce on ``con`` (inside a transaction: delivered when it commits)."""
        for payload in payloads(self._token, kind, ids):
            await con.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    def subscribe(self, handler: ChangeHandler) -> None:
        """Call ``handler(kind, ids)`` for every change another process announces."""
        self._handlers.append(handler)
        if self._listener is None:
            self.listening = asyncio.Event()
            self._listener = self._tasks.spawn(self._listen(), name="pg-listen")

    def _dispatch(self, kind: str, ids: list[int]) -> None:
        for handler in list(self._handlers):
            try:
                handler(kind, ids)
            except Exception:
                log.exception("change handler failed on %s", kind)

    def _heard(self, _con: object, _pid: int, _channel: str, payload: object) -> None:
        token, _, rest = str(payload).partition(":")
        if token == self._token:
            return
        kind, _, text = rest.partition(":")
        ids = [int(x) for x in text.split(",") if x]
        self._dispatch(kind, ids)

    async def _listen(self) -> None:
        """One connection that LISTENs; after a loss it reconnects and asks for a full resync."""
        delay = 0.2
        first = True
        while not self._closing:
            try:
                con = await asyncpg.connect(self.url, timeout=10)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("database unreachable for change notifications (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            lost = asyncio.Event()
            con.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                await con.add_listener(CHANNEL, self._heard)
                assert self.listening is not None
                self.listening.set()
                if not first:
                    log.info("change notifications back: full resync")
                    self._dispatch("resync", [])
                first = False
                delay = 0.2
                while not lost.is_set():
                    try:
                        async with asyncio.timeout(2.0):
                            await lost.wait()
                    except TimeoutError:
                        try:  # a silent network loss shows up here
                            await con.execute("SELECT 1", timeout=5)
                        except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError):
                            break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass
            finally:
                assert self.listening is not None
                self.listening.clear()
                con.terminate()
            if not self._closing:
                log.warning("lost the change-notification connection; reconnecting")
