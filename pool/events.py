"""Event types, and fire-and-forget delivery to whoever subscribed by glob.

| type                  | payload                                         | fires when                                         |
|-----------------------|-------------------------------------------------|----------------------------------------------------|
| proxy.pool_low        | active_count, threshold                         | active count falls below pool.low_threshold; once per crossing, again only after it recovered |
| proxy.new_batch       | source_id, source, count                        | a scrape found proxies the pool did not have       |
| source.failed         | source_id, source, error, consecutive_failures  | a scrape attempt failed (fetch or parse)           |
| source.stale          | source_id, source, hours_since_success          | no successful scrape within pool.stale_hours; once until the next success |
| credits.low_balance   | user_id, balance, threshold                     | a balance crosses credits.low_balance_threshold downwards; again only after a top-up |
| credits.exhausted     | user_id                                         | a balance reaches zero; again only after a top-up  |
| source.quarantined    | source_id, source, hours_without_yield          | ours: no active proxy from the source for pool.source_quarantine_hours; once until it yields again |

Delivery never blocks the caller: each notifier call runs in its own task with a timeout, and a
notifier that raises is logged and counted, like mitmproxy's ``safecall``.

Once per pool: several processes on one database (SQLite workers, PostgreSQL replicas) may each see
the same event (every worker charges the same users).  With ``marks`` set (the store), the task that
delivers first claims the event's occasion (``occasion``) as a ``pool_marks`` row; only the process
whose claim lands calls the notifiers.  A credit event's occasion is the user and the user's latest
top-up (ledger row id), so the next exhaustion after a top-up is a new one; an emitter may name the
occasion itself (``Event.once``).  Events with neither (``proxy.new_batch``, ``source.failed``,
``source.quarantined``: one process already decides them by a claim) are delivered unclaimed.  The
caller never waits on the database; a claim that cannot reach it is logged and the event is
delivered by this process (a duplicate is better than a loss).  Listeners (metrics, logs) are this
process's own and always hear it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pool.models import Event, Occasion
from pool.tasks import TaskSet

if TYPE_CHECKING:
    from datetime import datetime

    from plugins.protocols import Notifier

__all__ = ["CREDIT_EVENTS", "EVENT_TYPES", "EventBus", "Marks", "credit_occasion", "delivers", "matches", "occasion"]

log = logging.getLogger("proxy_pool.events")

EVENT_TYPES = (
    "proxy.pool_low",
    "proxy.new_batch",
    "source.failed",
    "source.stale",
    "credits.low_balance",
    "credits.exhausted",
    "source.quarantined",  # ours (pool.quality), beside the seed's
)


CREDIT_EVENTS = ("credits.low_balance", "credits.exhausted")


def matches(event_type: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


class Marks(Protocol):
    """The store's side of "once per pool"."""

    async def get_mark(self, name: str) -> datetime | None: ...
    async def claim_mark(self, name: str, last: datetime | None, at: datetime) -> bool: ...
    async def last_top_up(self, user_id: int) -> int: ...


def credit_occasion(event_type: str, user_id: int, top_up: int) -> Occasion:
    """A credit event of one user between two top-ups (``top_up``: the id of the latest one) is one
    occasion, whichever process saw it."""
    return Occasion(f"event:{event_type}:user-{user_id}:top-up-{top_up}")


async def occasion(event: Event, marks: Marks) -> Occasion | None:
    """The event's occasion: its own, a credit event's, or None (delivered unclaimed)."""
    if event.once is not None:
        return event.once
    if event.type in CREDIT_EVENTS:
        user_id = int(event.payload["user_id"])
        return credit_occasion(event.type, user_id, await marks.last_top_up(user_id))
    return None


def delivers(last: datetime | None, since: datetime | None) -> bool:
    """Whether an occasion whose mark says ``last`` is still to be delivered: never claimed, or (with
    ``since``) claimed before ``since``."""
    return last is None or (since is not None and last < since)


Listener = Callable[[Event], None]


class EventBus:
    def __init__(self, notify_timeout: float = 30.0) -> None:
        self._notifiers: list[Notifier] = []
        self._listeners: list[Listener] = []
        self._tasks = TaskSet()
        self._notify_timeout = notify_timeout
        self.delivery_failures: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self.on_plugin_error: Callable[[str, str, BaseException], None] | None = None  # plugin, hook, exc
        self.marks: Marks | None = None  # the store: notifiers hear an event once per pool

    def add_notifier(self, notifier: Notifier) -> None:
        self._notifiers.append(notifier)

    def add_listener(self, listener: Listener) -> None:
        """In-process, synchronous observers (metrics, logs); must be cheap."""
        self._listeners.append(listener)

    def emit_nowait(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a broken observer must not break the caller
                log.exception("event listener failed on %s", event.type)
        notifiers = [n for n in self._notifiers if matches(event.type, list(n.subscribes_to))]
        if not notifiers:
            return
        if self.marks is None:
            self._deliver_all(notifiers, event)
        else:
            self._tasks.spawn(self._claim_and_deliver(notifiers, event), name=f"notify-claim-{event.type}")

    def _deliver_all(self, notifiers: list[Notifier], event: Event) -> None:
        for notifier in notifiers:
            self._tasks.spawn(self._deliver(notifier, event), name=f"notify-{notifier.name}-{event.type}")

    async def _claim_and_deliver(self, notifiers: list[Notifier], event: Event) -> None:
        if await self._claim(event):  # delivered in this task: ``drain`` waits for it, claim and all
            await asyncio.gather(*(self._deliver(notifier, event) for notifier in notifiers))

    async def _claim(self, event: Event) -> bool:
        """Whether this process delivers the event: it claimed the occasion, or nobody can (see above)."""
        marks = self.marks
        assert marks is not None
        try:
            once = await occasion(event, marks)
            if once is None:
                return True
            last = await marks.get_mark(once.name)
            if not delivers(last, once.since):
                log.info("event %s: already delivered by another process (%s)", event.type, once.name)
                return False
            return await marks.claim_mark(once.name, last, event.at)
        except Exception as exc:
            log.warning(
                "event %s: could not claim it for the pool (%s: %s); delivered from this process, another "
                "process may deliver it too",
                event.type, type(exc).__name__, str(exc)[:200],
            )
            return True

    async def emit(self, event: Event) -> None:
        self.emit_nowait(event)

    async def _deliver(self, notifier: Notifier, event: Event) -> None:
        try:
            await asyncio.wait_for(notifier.notify(event), self._notify_timeout)
        except Exception as exc:
            self.delivery_failures[notifier.name] = self.delivery_failures.get(notifier.name, 0) + 1
            self.last_error[notifier.name] = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("notifier %s failed on %s: %s", notifier.name, event.type, self.last_error[notifier.name])
            if self.on_plugin_error is not None and not isinstance(exc, TimeoutError):
                self.on_plugin_error(notifier.name, "notify", exc)

    async def drain(self, timeout: float = 5.0) -> None:
        """Give pending deliveries a moment at shutdown, then cancel the rest."""
        await self._tasks.wait(timeout)
        await self._tasks.close()
