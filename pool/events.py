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
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pool.models import Event
from pool.tasks import TaskSet

if TYPE_CHECKING:
    from plugins.protocols import Notifier

__all__ = ["EVENT_TYPES", "EventBus", "matches"]

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


def matches(event_type: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in patterns)


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
        for notifier in self._notifiers:
            if matches(event.type, list(notifier.subscribes_to)):
                self._tasks.spawn(self._deliver(notifier, event), name=f"notify-{notifier.name}-{event.type}")

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
