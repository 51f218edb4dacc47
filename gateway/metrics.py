"""Prometheus metrics: one registry per ``Metrics`` object, cheap calls on the hot path.

Every family has the prefix ``proxy_pool_``, base units (seconds, bytes) and ``_total`` counters.
No label takes unbounded values: each label below has a closed set, and anything outside it is
counted as ``other`` (a client can send any method; a caller may pass a new reason by mistake):

| family                                   | type      | labels (values)                                           |
|------------------------------------------|-----------|-----------------------------------------------------------|
| proxies                                  | gauge     | status (new, active, dead), protocol (http, https, socks4, socks5); read at scrape time |
| active_proxies_by_country                | gauge     | country (ISO code, "unknown"); read at scrape time        |
| active_proxies_by_tunnels                | gauge     | tunnels (yes, no, unknown); read at scrape time           |
| gateway_requests_total                   | counter   | method (METHODS, other), outcome (OUTCOMES), protocol (PROTOCOLS) |
| gateway_request_duration_seconds         | histogram | -  (request start to response head / tunnel established)  |
| gateway_active_connections               | gauge     | -                                                         |
| gateway_bytes_total                      | counter   | direction (upstream_to_client, client_to_upstream)        |
| upstream_failures_total                  | counter   | reason (FAILURE_REASONS)                                  |
| checks_total                             | counter   | checker (plugin name), result (passed, failed, skipped)   |
| check_duration_seconds                   | histogram | checker (plugin name)                                     |
| scrapes_total                            | counter   | source (source id), result (ok, failed)                   |
| scrape_discovered_total                  | counter   | source (source id)                                        |
| source_active_proxies                    | gauge     | source (source id): active proxies it lists (pool.quality, as of its last pass) |
| source_median_latency_seconds            | gauge     | source: median latency of those proxies                   |
| source_survival_ratio                    | gauge     | source, after (1h, 24h): share of its proxies still active then |
| source_quarantined                       | gauge     | source: 1 while quarantined                               |
| notifier_up                              | gauge     | notifier (plugin name)                                    |
| events_total                             | counter   | type (pool.events.EVENT_TYPES, other)                     |
| credits_spent_total                      | counter   | -                                                         |
| plugin_errors_total                      | counter   | plugin (plugin name)                                      |

``checker``, ``notifier`` and ``plugin`` are bounded by the installed plugins; ``source`` is the numeric source
id, bounded because sources are few and defined by the operator (``forget_source`` drops a removed
one).  No proxy address and no user name is ever a label.

The pool gauges are not stored here: a custom collector calls the ``pool_counts`` callback (the
selector's in-memory view) when Prometheus scrapes, so they are never stale and cost nothing between
scrapes.  The per-request families (requests, duration, bytes) are plain integers in this object,
turned into samples by a second collector at scrape time: prometheus_client takes a lock on every
``inc`` and ``observe``, which the profile of the gateway's keep-alive bench showed (four lock
round-trips per request).  The gateway runs on one event loop thread, so plain ``+=`` is safe, and a
scrape reads the numbers from that same thread.
"""

from __future__ import annotations

import builtins
import logging
from bisect import bisect_left
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pool.events import EVENT_TYPES
from pool.models import Event, ProxyProtocol, ProxyStatus

__all__ = [
    "CHECK_RESULTS",
    "DIRECTIONS",
    "FAILURE_REASONS",
    "FAMILIES",
    "METHODS",
    "OUTCOMES",
    "Metrics",
    "PoolCounts",
    "SourceSample",
]

log = logging.getLogger("proxy_pool.metrics")

PREFIX = "proxy_pool_"

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
PROTOCOLS = ("http", "connect", "socks5", "socks4", "intercepted")  # how the client spoke to the gateway
OUTCOMES = (
    "ok",  # a response (any status from the origin) or an established tunnel reached the client
    "bad_request",  # 400
    "forbidden",  # 403: target or port not allowed
    "auth_required",  # 407
    "payment_required",  # 402: credits exhausted
    "rate_limited",  # 429: a per-user limit (connections, requests per second)
    "credits_unavailable",  # 503: credits leased elsewhere and the database unreachable to lease them
    "headers_too_large",  # 431
    "no_proxy",  # 503: no active proxy matches the route
    "upstream_error",  # 502: every attempt failed
    "timeout",  # 504
    "client_closed",  # the client went away before an answer
    "overloaded",  # 503: max_connections reached and no slot freed in time
    "error",  # an internal error (500)
    "other",
)
FAILURE_REASONS = (
    "refused",
    "timeout",
    "reset",
    "dns",
    "tls",
    "socks_error",
    "http_status",  # the upstream answered CONNECT / a request with an error status (e.g. 407, 502)
    "auth_failed",  # the upstream rejected its credentials
    "protocol_error",  # the upstream spoke something we could not parse
    "banned",  # a status in gateway.retry_on_status
    "other",
)
DIRECTIONS = ("upstream_to_client", "client_to_upstream")
CHECK_RESULTS = ("passed", "failed", "skipped")
SCRAPE_RESULTS = ("ok", "failed")

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)

# Every family name as exposed (counters with their ``_total``); tests and dashboards check against it.
FAMILIES = tuple(
    PREFIX + name
    for name in (
        "proxies",
        "active_proxies_by_country",
        "active_proxies_by_tunnels",
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_active_connections",
        "gateway_bytes_total",
        "gateway_hedges_total",
        "gateway_hedge_wins_total",
        "upstream_failures_total",
        "checks_total",
        "check_duration_seconds",
        "scrapes_total",
        "scrape_discovered_total",
        "notifier_up",
        "events_total",
        "credits_spent_total",
        "plugin_errors_total",
        "source_active_proxies",
        "source_median_latency_seconds",
        "source_survival_ratio",
        "source_quarantined",
    )
)

PoolCounts = Callable[[], Mapping[tuple[str, str], int]]
CountryCounts = Callable[[], Mapping[str | None, int]]


def _text(value: object) -> str:
    """Enum members and plain strings alike become their value."""
    return str(getattr(value, "value", value))


class _PoolCollector(Collector):
    """Reads the in-memory pool view at scrape time; a failing callback drops its samples, not the scrape."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return [self._proxies_family(), self._country_family(), self._tunnels_family()]

    def _tunnels_family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PREFIX + "active_proxies_by_tunnels",
            "Active proxies by CONNECT capability (yes, no: plain HTTP only, unknown: not checked yet).",
            labels=["tunnels"],
        )

    def _proxies_family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PREFIX + "proxies", "Proxies in the pool by status and protocol.", labels=["status", "protocol"]
        )

    def _country_family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            PREFIX + "active_proxies_by_country",
            "Active proxies by exit country (ISO 3166 code, or unknown).",
            labels=["country"],
        )

    def collect(self) -> Iterator[Metric]:
        proxies = self._proxies_family()
        callback = self._owner.pool_counts
        if callback is not None:
            try:
                counts = {(_text(s), _text(p)): int(n) for (s, p), n in callback().items()}
            except Exception:
                log.exception("pool_counts callback failed; proxies gauge left out of this scrape")
            else:
                for status in ProxyStatus:
                    for protocol in ProxyProtocol:
                        proxies.add_metric(
                            [status.value, protocol.value], counts.pop((status.value, protocol.value), 0)
                        )
                for (status_text, protocol_text), n in sorted(counts.items()):
                    proxies.add_metric([status_text, protocol_text], n)
        yield proxies

        countries = self._country_family()
        by_country = self._owner.country_counts
        if by_country is not None:
            try:
                rows = {(_text(c) if c else "unknown"): int(n) for c, n in by_country().items()}
            except Exception:
                log.exception("country_counts callback failed; country gauge left out of this scrape")
            else:
                for country, n in sorted(rows.items()):
                    countries.add_metric([country], n)
        yield countries

        tunnels = self._tunnels_family()
        by_tunnels = self._owner.tunnel_counts
        if by_tunnels is not None:
            try:
                tunnel_rows = {str(k): int(n) for k, n in by_tunnels().items()}
            except Exception:
                log.exception("tunnel_counts callback failed; tunnels gauge left out of this scrape")
            else:
                for value in ("yes", "no", "unknown"):
                    tunnels.add_metric([value], tunnel_rows.get(value, 0))
        yield tunnels


@dataclass(frozen=True, slots=True)
class SourceSample:
    """One source's quality figures for its gauges (``pool.quality``)."""

    active: int
    median_latency_ms: float | None
    survival_1h: float | None
    survival_24h: float | None
    quarantined: bool


class _SourceCollector(Collector):
    """Per-source quality read at scrape time from the ``source_quality`` callback (figures in memory)."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(PREFIX + "source_active_proxies", "Active proxies a source lists.", labels=["source"]),
            GaugeMetricFamily(
                PREFIX + "source_median_latency_seconds", "Median latency of a source's active proxies.", labels=["source"]
            ),
            GaugeMetricFamily(
                PREFIX + "source_survival_ratio",
                "Share of a source's proxies still active 1 h / 24 h after it first listed them.",
                labels=["source", "after"],
            ),
            GaugeMetricFamily(PREFIX + "source_quarantined", "1 while a source is quarantined.", labels=["source"]),
        )

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        active, latency, survival, quarantined = self._families()
        callback = self._owner.source_quality
        samples: dict[int, SourceSample] = {}
        if callback is not None:
            try:
                samples = dict(callback())
            except Exception:
                log.exception("source_quality callback failed; source gauges left out of this scrape")
        for source_id, sample in sorted(samples.items()):
            label = str(source_id)
            active.add_metric([label], sample.active)
            if sample.median_latency_ms is not None:
                latency.add_metric([label], sample.median_latency_ms / 1000)
            for after, ratio in (("1h", sample.survival_1h), ("24h", sample.survival_24h)):
                if ratio is not None:
                    survival.add_metric([label, after], ratio)
            quarantined.add_metric([label], int(sample.quarantined))
        yield from (active, latency, survival, quarantined)


class _GatewayCollector(Collector):
    """The per-request families, read from the plain counters of ``Metrics`` at scrape time."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                PREFIX + "gateway_requests",
                "Gateway requests (each CONNECT, each SOCKS connection counts once) by method, outcome and protocol.",
                labels=["method", "outcome", "protocol"],
            ),
            HistogramMetricFamily(
                PREFIX + "gateway_request_duration_seconds",
                "Seconds from a request's head to its response head or established tunnel.",
            ),
            CounterMetricFamily(PREFIX + "gateway_bytes", "Bytes relayed by the gateway by direction.", labels=["direction"]),
        )

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        requests, duration, relayed = self._families()
        for (method, outcome, protocol), n in list(owner.request_counts.items()):
            requests.add_metric([method, outcome, protocol], n)
        cumulative = 0
        buckets = []
        for bound, n in zip((*REQUEST_BUCKETS, float("inf")), list(owner.duration_counts), strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        duration.add_metric([], buckets, owner.duration_sum)
        for direction in DIRECTIONS:
            relayed.add_metric([direction], owner.bytes_relayed[direction])
        yield requests
        yield duration
        yield relayed


class _Labelled:
    """A registry seen through ``replica="NAME"`` added to every sample (what exposition reads)."""

    def __init__(self, registry: CollectorRegistry, replica: str) -> None:
        self.registry = registry
        self.replica = replica

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, "replica": self.replica}) for s in family.samples]
            yield labelled


class Metrics:
    """All proxy-pool metrics in a private ``CollectorRegistry`` (so tests can build many).

    ``pool_counts`` returns ``{(status, protocol): n}`` and ``country_counts`` ``{country or None: n}``
    for active proxies; both are called only when Prometheus scrapes and must not do I/O.  They may
    be set after construction (``metrics.pool_counts = selector.counts``).
    """

    def __init__(
        self,
        pool_counts: PoolCounts | None = None,
        country_counts: CountryCounts | None = None,
        *,
        process_metrics: bool = True,
    ) -> None:
        # ``*_created`` series would double every counter as a separate gauge in the 0.0.4 text
        # format for no use here.  prometheus_client only offers this switch process-wide.
        disable_created_metrics()
        self.pool_counts = pool_counts
        self.country_counts = country_counts
        self.tunnel_counts: Callable[[], dict[str, int]] | None = None  # {"yes"|"no"|"unknown": n}, set later
        self.replica: str | None = None  # with replicas: a ``replica`` label on every series
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        if process_metrics:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
        reg.register(_PoolCollector(self))
        self.source_quality: Callable[[], Mapping[int, SourceSample]] | None = None  # set by the app
        reg.register(_SourceCollector(self))

        # per-request families: plain numbers, read by _GatewayCollector at scrape time
        # keys only ever (known method | other, known outcome | other, PROTOCOLS)
        self.request_counts: dict[tuple[str, str, str], int] = {}
        self.duration_counts = [0] * (len(REQUEST_BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.duration_sum = 0.0
        self.bytes_relayed = dict.fromkeys(DIRECTIONS, 0)
        reg.register(_GatewayCollector(self))
        self._active = Gauge(
            PREFIX + "gateway_active_connections", "Client connections open on the gateway.", registry=reg
        )
        self._failures_family = Counter(
            PREFIX + "upstream_failures",
            "Failed attempts to use an upstream proxy by reason.",
            ["reason"],
            registry=reg,
        )
        self._checks_family = Counter(
            PREFIX + "checks",
            "Checker plugin runs by checker and result.",
            ["checker", "result"],
            registry=reg,
        )
        self._check_duration_family = Histogram(
            PREFIX + "check_duration_seconds",
            "Seconds one checker plugin took on one proxy.",
            ["checker"],
            buckets=CHECK_BUCKETS,
            registry=reg,
        )
        self._scrapes_family = Counter(
            PREFIX + "scrapes", "Source scrapes by source id and result.", ["source", "result"], registry=reg
        )
        self._discovered_family = Counter(
            PREFIX + "scrape_discovered",
            "Proxies found by scrapes (before dedupe) by source id.",
            ["source"],
            registry=reg,
        )
        self._notifier_family = Gauge(
            PREFIX + "notifier_up",
            "1 when the notifier's last health check passed, else 0.",
            ["notifier"],
            registry=reg,
        )
        self._events_family = Counter(PREFIX + "events", "Events emitted by type.", ["type"], registry=reg)
        self._credits = Counter(PREFIX + "credits_spent", "Credits charged to gateway users.", registry=reg)
        self._hedges = Counter(
            PREFIX + "gateway_hedges",
            "Requests also sent through a second upstream because the first was slow to answer.",
            registry=reg,
        )
        self._hedge_wins = Counter(
            PREFIX + "gateway_hedge_wins", "Hedged requests answered through the second upstream.", registry=reg
        )
        self._plugin_errors_family = Counter(
            PREFIX + "plugin_errors",
            "Exceptions raised by plugin calls (and calls that blocked the event loop), by plugin.",
            ["plugin"],
            registry=reg,
        )

        # Children cached by label values: after first use the hot path is a dict lookup, no .labels().
        self._known_methods = frozenset(METHODS)
        self._known_outcomes = frozenset(OUTCOMES)
        self._failures = {r: self._failures_family.labels(r) for r in FAILURE_REASONS}
        self._events = {t: self._events_family.labels(t) for t in (*EVENT_TYPES, "other")}
        self._checks: dict[tuple[str, str], Any] = {}
        self._check_durations: dict[str, Any] = {}
        self._scrapes: dict[tuple[str, str], Any] = {}
        self._discovered: dict[str, Any] = {}
        self._notifiers: dict[str, Any] = {}

    # -- gateway (hot path) -------------------------------------------------------------------

    def request_done(self, method: str, outcome: str, seconds: float, protocol: str | None = None) -> None:
        """One request or CONNECT finished; ``seconds`` until its response head / tunnel was up.
        ``protocol`` is the client's (``socks5``, ``socks4``); HTTP clients leave it to ``method``."""
        counts = self.request_counts
        if protocol is None:
            protocol = "connect" if method == "CONNECT" else "http"
        key = (method, outcome, protocol)
        n = counts.get(key)
        if n is None:
            key = (
                method if method in self._known_methods else "other",
                outcome if outcome in self._known_outcomes else "other",
                protocol if protocol in PROTOCOLS else "other",
            )
            n = counts.get(key, 0)
        counts[key] = n + 1
        if seconds >= 0:
            self.duration_counts[bisect_left(REQUEST_BUCKETS, seconds)] += 1
            self.duration_sum += seconds

    def bytes(self, direction: str, n: int) -> None:
        """``n`` bytes relayed; ``direction`` is ``upstream_to_client`` or ``client_to_upstream``."""
        if n > 0:
            self.bytes_relayed[direction] += n

    def connection_opened(self) -> None:
        self._active.inc()

    def connection_closed(self) -> None:
        self._active.dec()

    def upstream_failure(self, reason: str) -> None:
        child = self._failures.get(reason)
        (child if child is not None else self._failures["other"]).inc()

    def hedge(self, won: bool) -> None:
        (self._hedge_wins if won else self._hedges).inc()

    def credits_spent(self, n: int) -> None:
        if n > 0:
            self._credits.inc(n)

    # -- control plane -----------------------------------------------------------------------

    def register_checker(self, checker: str) -> None:
        """Create a checker's series at 0 (call at start-up) so rate() sees its first run."""
        if checker not in self._check_durations:
            for r in CHECK_RESULTS:
                self._checks[(checker, r)] = self._checks_family.labels(checker, r)
            self._check_durations[checker] = self._check_duration_family.labels(checker)

    def check_done(self, checker: str, result: str, seconds: float | None) -> None:
        """One checker plugin ran on one proxy; ``result`` is passed, failed or skipped."""
        child = self._checks.get((checker, result))
        if child is None:
            if result not in CHECK_RESULTS:
                raise ValueError(f"check result {result!r} is not one of {CHECK_RESULTS}")
            self.register_checker(checker)
            child = self._checks[(checker, result)]
        child.inc()
        if seconds is not None and seconds >= 0:
            self._check_durations[checker].observe(seconds)

    def register_source(self, source_id: int | str) -> None:
        """Create a source's series at 0 (call at start-up and on add) so increase() sees the
        first failure, and "failed, never ok" is expressible in an alert."""
        source = str(source_id)
        if source not in self._discovered:
            for r in SCRAPE_RESULTS:
                self._scrapes[(source, r)] = self._scrapes_family.labels(source, r)
            self._discovered[source] = self._discovered_family.labels(source)

    def scrape_done(self, source_id: int | str, ok: bool, discovered: int = 0) -> None:
        """One scrape of a source finished; ``discovered`` proxies parsed from it."""
        source = str(source_id)
        result = "ok" if ok else "failed"
        child = self._scrapes.get((source, result))
        if child is None:
            self.register_source(source)
            child = self._scrapes[(source, result)]
        child.inc()
        if discovered > 0:
            self._discovered[source].inc(discovered)

    def forget_source(self, source_id: int | str) -> None:
        """A source was removed: drop its series so the label set stays what the operator defined."""
        source = str(source_id)
        for r in SCRAPE_RESULTS:
            if self._scrapes.pop((source, r), None) is not None:
                self._scrapes_family.remove(source, r)
        if self._discovered.pop(source, None) is not None:
            self._discovered_family.remove(source)

    def notifier_up(self, name: str, up: bool) -> None:
        child = self._notifiers.get(name)
        if child is None:
            child = self._notifiers[name] = self._notifier_family.labels(name)
        child.set(1 if up else 0)

    def plugin_error(self, plugin: str) -> None:
        """A plugin call raised (or blocked the loop); ``plugin`` is its name."""
        self._plugin_errors_family.labels(plugin).inc()

    def event(self, type_: str) -> None:
        child = self._events.get(type_)
        (child if child is not None else self._events["other"]).inc()

    def on_event(self, event: Event) -> None:
        """An ``EventBus`` listener: ``bus.add_listener(metrics.on_event)``."""
        self.event(event.type)

    # -- reading -----------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[builtins.bytes, str]:
        """The body and Content-Type for ``GET /metrics`` (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        registry: Any = self.registry if self.replica is None else _Labelled(self.registry, self.replica)
        return encoder(registry), content_type

    def check_counts(self) -> dict[tuple[str, str], int]:
        """(checker, result) -> runs so far; one family, not the whole registry (the dashboard's sampler)."""
        return {
            (sample.labels["checker"], sample.labels["result"]): int(sample.value)
            for family in self._checks_family.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    def active_connections(self) -> int:
        """Client connections open on the gateway now."""
        return int(sum(sample.value for family in self._active.collect() for sample in family.samples))

    def summary(self) -> dict[str, Any]:
        """Gateway and checker figures for ``/api/stats``, read through the public collect() API."""
        out: dict[str, Any] = {
            "requests": {},
            "active_connections": 0,
            "bytes": {d: 0 for d in DIRECTIONS},
            "upstream_failures": {},
            "checks": {r: 0 for r in CHECK_RESULTS},
            "credits_spent": 0,
        }
        wanted = {
            PREFIX + "gateway_requests",
            PREFIX + "gateway_active_connections",
            PREFIX + "gateway_bytes",
            PREFIX + "upstream_failures",
            PREFIX + "checks",
            PREFIX + "credits_spent",
        }
        for family in self.registry.collect():
            if family.name not in wanted:
                continue
            for sample in family.samples:
                value = int(sample.value)
                short = family.name.removeprefix(PREFIX)
                if short == "gateway_requests" and value:
                    outcome = sample.labels["outcome"]
                    out["requests"][outcome] = out["requests"].get(outcome, 0) + value
                elif short == "gateway_active_connections":
                    out["active_connections"] = value
                elif short == "gateway_bytes":
                    out["bytes"][sample.labels["direction"]] = value
                elif short == "upstream_failures" and value:
                    out["upstream_failures"][sample.labels["reason"]] = value
                elif short == "checks":
                    out["checks"][sample.labels["result"]] += value
                elif short == "credits_spent":
                    out["credits_spent"] = value
        return out
