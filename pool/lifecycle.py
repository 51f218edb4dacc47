"""What a check run does to a proxy: state, figures, and when to look again.  Pure functions.

States (glider's "disabled until a check passes"): a NEW proxy is never chosen; a passing run makes
it ACTIVE; a failing run makes it DEAD; a DEAD proxy is re-checked with growing back-off and removed
after ``checker.remove_dead_after``.  A run without a verdict (every judge down) changes no state.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

from config.settings import CheckerSettings
from pool.models import AnonymityLevel, Proxy, ProxyStatus

__all__ = ["RunVerdict", "apply_run", "is_due", "next_check_at", "should_remove"]

HISTORY = 20  # checks the success ratio is computed over
LATENCY_WEIGHT = 0.3  # exponential moving average weight of the newest latency

LEGAL: dict[ProxyStatus, frozenset[ProxyStatus]] = {
    ProxyStatus.NEW: frozenset({ProxyStatus.NEW, ProxyStatus.ACTIVE, ProxyStatus.DEAD}),
    ProxyStatus.ACTIVE: frozenset({ProxyStatus.ACTIVE, ProxyStatus.DEAD}),
    ProxyStatus.DEAD: frozenset({ProxyStatus.ACTIVE, ProxyStatus.DEAD}),
}


@dataclass
class RunVerdict:
    """The outcome of one pipeline run, as the lifecycle needs it."""

    passed: bool | None  # None: no verdict
    at: datetime
    latency_ms: float | None = None
    exit_ip: str | None = None
    anonymity: AnonymityLevel | None = None
    country: str | None = None
    failed_check: str | None = None
    detail: str = ""
    tunnels: bool | None = None  # what tls_tunnel found; None when it did not run or could not tell


def apply_run(proxy: Proxy, run: RunVerdict) -> ProxyStatus:
    """Update ``proxy`` in place from ``run``; returns its previous status."""
    before = proxy.status
    proxy.last_checked = run.at
    if run.passed is None:
        return before
    proxy.tunnels = run.tunnels  # a fresh verdict replaces the gateway's "refused CONNECT" mark too
    # interned: a big pool holds a handful of distinct histories, not one string per proxy
    proxy.check_history = sys.intern((proxy.check_history + ("1" if run.passed else "0"))[-HISTORY:])
    proxy.success_ratio = proxy.check_history.count("1") / len(proxy.check_history)
    if run.passed:
        new = ProxyStatus.ACTIVE
        proxy.consecutive_failures = 0
        proxy.dead_since = None
        if run.latency_ms is not None:
            proxy.latency_ms = (
                run.latency_ms
                if proxy.latency_ms is None
                else (1 - LATENCY_WEIGHT) * proxy.latency_ms + LATENCY_WEIGHT * run.latency_ms
            )
        if run.exit_ip is not None:
            proxy.exit_ip = run.exit_ip
        if run.anonymity is not None:
            proxy.anonymity = run.anonymity
        if run.country is not None:
            proxy.country = sys.intern(run.country)
    else:
        new = ProxyStatus.DEAD
        proxy.consecutive_failures += 1
        if proxy.dead_since is None:
            proxy.dead_since = run.at
    assert new in LEGAL[before], f"illegal transition {before} -> {new}"
    proxy.status = new
    return before


def next_check_at(proxy: Proxy, settings: CheckerSettings) -> datetime | None:
    """When ``proxy`` is due again; None means now."""
    if proxy.last_checked is None:
        return None
    if proxy.status is ProxyStatus.ACTIVE:
        return proxy.last_checked + timedelta(seconds=settings.recheck_interval)
    if proxy.status is ProxyStatus.DEAD:
        exponent = max(0, min(proxy.consecutive_failures - 1, 16))
        wait = min(settings.dead_backoff * (2**exponent), settings.dead_backoff_max)
        return proxy.last_checked + timedelta(seconds=wait)
    # NEW without a verdict yet (judges were down): try again after a normal interval
    return proxy.last_checked + timedelta(seconds=min(settings.recheck_interval, settings.dead_backoff))


def is_due(proxy: Proxy, settings: CheckerSettings, now: datetime) -> bool:
    due = next_check_at(proxy, settings)
    return due is None or due <= now


def should_remove(proxy: Proxy, settings: CheckerSettings, now: datetime) -> bool:
    return (
        proxy.status is ProxyStatus.DEAD
        and proxy.dead_since is not None
        and (now - proxy.dead_since).total_seconds() >= settings.remove_dead_after
    )
