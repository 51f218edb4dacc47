"""A few hours of figures for the dashboard, from what the metrics already count, and the last events.

``History`` samples every ``interval`` seconds in one background task (never per request): the pool's
counts, and the differences of the gateway's counters since the previous sample (requests per second by
outcome, latency percentiles from the duration histogram, bytes, connections, checks per checker).  The
ring buffer is bounded (``hours`` of samples).  ``EventLog`` keeps the last events with their payloads, every
URL's password and query values masked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.metrics import REQUEST_BUCKETS
from pool.models import MASK, Event, masked_url
from pool.tasks import TaskSet

if TYPE_CHECKING:
    from gateway.app import ProxyPool

__all__ = ["EVENTS", "HISTORY", "EventLog", "History", "history_context", "mask_secrets"]

log = logging.getLogger("proxy_pool.dashboard")

OK_OUTCOMES = frozenset({"ok"})
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s\"'<>]+", re.IGNORECASE)
_SECRET_KEYS = re.compile(r"password|passwd|secret|token|key|auth|credential|cookie", re.IGNORECASE)


def mask_secrets(value: Any, key: str = "") -> Any:
    """A payload safe to show: every URL in it as ``masked_url`` shows it, secret-named fields hidden."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v, key) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if _SECRET_KEYS.search(key):
        return MASK
    return _URL.sub(lambda m: masked_url(m[0]), str(value))  # anything else as text (JSON-safe)


class EventLog:
    """The last ``keep`` events (an EventBus listener: cheap, synchronous)."""

    def __init__(self, keep: int = 200) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=keep)

    def __call__(self, event: Event) -> None:
        self.events.append({"type": event.type, "payload": mask_secrets(event.payload), "at": event.at.isoformat()})

    def latest(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.events)[-limit:][::-1]


def _percentile(deltas: list[int], q: float) -> float | None:
    """The ``q`` quantile in ms from per-bucket counts, interpolated inside its bucket as Prometheus'
    ``histogram_quantile`` does (the +Inf bucket answers the highest bound); None without a request."""
    total = sum(deltas)
    if total <= 0:
        return None
    wanted, seen = q * total, 0
    for i, n in enumerate(deltas):
        if n > 0 and seen + n >= wanted:
            if i >= len(REQUEST_BUCKETS):
                return REQUEST_BUCKETS[-1] * 1000
            lower = REQUEST_BUCKETS[i - 1] if i else 0.0
            upper = REQUEST_BUCKETS[i]
            return round((lower + (upper - lower) * (wanted - seen) / n) * 1000, 1)
        seen += n
    return REQUEST_BUCKETS[-1] * 1000


class History:
    """The ring buffer of samples (see the module docstring)."""

    def __init__(
        self, pool: ProxyPool, *, interval: float = 5.0, hours: float = 4.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.clock = clock
        self.points: deque[dict[str, Any]] = deque(maxlen=max(2, int(hours * 3600 / interval)))
        self.checkers: dict[str, dict[str, int]] = {}
        self._last: dict[str, Any] | None = None

    def _raw(self) -> dict[str, Any]:
        """The counters now: the gateway's plain numbers, the checks and the open connections (never the whole
        registry, whose pool gauges walk every proxy)."""
        metrics = self.pool.metrics
        requests: dict[str, int] = {}
        for (_, outcome, _), n in list(metrics.request_counts.items()):
            requests[outcome] = requests.get(outcome, 0) + n
        checks: dict[str, dict[str, int]] = {}
        for (checker, result), n in metrics.check_counts().items():
            checks.setdefault(checker, {})[result] = n
        return {
            "t": self.clock(),
            "requests": requests,
            "durations": list(metrics.duration_counts),
            "bytes": dict(metrics.bytes_relayed),
            "checks": checks,
            "connections": metrics.active_connections(),
        }

    def sample(self) -> dict[str, Any]:
        """One point: the pool now, and rates since the previous sample (0 for the first)."""
        raw = self._raw()
        last = self._last or raw
        span = max(raw["t"] - last["t"], 1e-3)

        def rate(n: float) -> float:
            return round(n / span, 3)

        per_outcome = {k: v - last["requests"].get(k, 0) for k, v in raw["requests"].items()}
        ok = sum(n for k, n in per_outcome.items() if k in OK_OUTCOMES)
        failed = sum(n for k, n in per_outcome.items() if k not in OK_OUTCOMES)
        durations = [a - b for a, b in zip(raw["durations"], last["durations"], strict=True)]
        checks_done = 0
        for checker, results in raw["checks"].items():
            before = last["checks"].get(checker, {})
            checks_done += sum(v - before.get(r, 0) for r, v in results.items())
        self.checkers = raw["checks"]
        selector = self.pool.selector
        counts: dict[str, int] = {}
        for (status, _), n in selector.counts().items():
            counts[status] = counts.get(status, 0) + n
        point = {
            "t": round(raw["t"], 3),
            "total": len(selector),
            "active": selector.active_count,
            "new": counts.get("new", 0),
            "dead": counts.get("dead", 0),
            "benched": len(selector.benched),
            "rps_ok": rate(ok),
            "rps_failed": rate(failed),
            "rps_by_outcome": {k: rate(n) for k, n in sorted(per_outcome.items()) if n > 0},
            "p50_ms": _percentile(durations, 0.5),
            "p95_ms": _percentile(durations, 0.95),
            "p99_ms": _percentile(durations, 0.99),
            "connections": raw["connections"],
            "bytes_up_ps": rate(raw["bytes"]["client_to_upstream"] - last["bytes"]["client_to_upstream"]),
            "bytes_down_ps": rate(raw["bytes"]["upstream_to_client"] - last["bytes"]["upstream_to_client"]),
            "backlog": self.pool.pipeline.backlog,
            "checks_ps": rate(checks_done),
        }
        self._last = raw
        self.points.append(point)
        return point

    def checker_rates(self) -> list[dict[str, Any]]:
        """Per checker since start: passed, failed, skipped and the pass rate (None before its first verdict)."""
        out = []
        for name in [c.name for c in self.pool.registry.checkers]:
            results = self.checkers.get(name, {})
            passed, failed = results.get("passed", 0), results.get("failed", 0)
            out.append(
                {
                    "checker": name,
                    "passed": passed,
                    "failed": failed,
                    "skipped": results.get("skipped", 0),
                    "pass_rate": round(passed / (passed + failed), 3) if passed + failed else None,
                }
            )
        return out

    async def run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                log.warning("dashboard sample failed", exc_info=True)
            await asyncio.sleep(self.interval)


HISTORY = web.AppKey("history", History)
EVENTS = web.AppKey("event_log", EventLog)


async def history_context(app: web.Application) -> AsyncIterator[None]:
    """The sampler lives as long as the admin app (aiohttp cleanup context)."""
    tasks = TaskSet()
    tasks.spawn(app[HISTORY].run(), name="dashboard-history")
    yield
    await tasks.close()
