"""gateway.metrics: every contract family, promtool-clean, bounded labels, pool gauges at scrape time."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import FAMILIES, METHODS, Metrics
from pool.models import Event

PROMTOOL = shutil.which("promtool") or "promtool"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)

CONTRACT_FAMILIES = [
    "proxy_pool_proxies",
    "proxy_pool_gateway_requests_total",
    "proxy_pool_gateway_request_duration_seconds",
    "proxy_pool_gateway_active_connections",
    "proxy_pool_gateway_bytes_total",
    "proxy_pool_upstream_failures_total",
    "proxy_pool_checks_total",
    "proxy_pool_check_duration_seconds",
    "proxy_pool_scrapes_total",
    "proxy_pool_scrape_discovered_total",
    "proxy_pool_notifier_up",
    "proxy_pool_events_total",
    "proxy_pool_credits_spent_total",
    "proxy_pool_plugin_errors_total",
]


def exercised(pool: dict[tuple[str, str], int] | None = None) -> Metrics:
    """A Metrics object on which every recording method ran at least once."""
    counts = pool if pool is not None else {("active", "http"): 3, ("dead", "socks5"): 2}
    m = Metrics(lambda: counts, lambda: {"DE": 2, None: 1})
    m.connection_opened()
    m.request_done("GET", "ok", 0.05)
    m.request_done("CONNECT", "upstream_error", 1.5)
    m.bytes("upstream_to_client", 1000)
    m.bytes("client_to_upstream", 10)
    m.upstream_failure("refused")
    m.check_done("tcp_connect", "passed", 0.02)
    m.check_done("http_anonymity", "skipped", None)
    m.scrape_done(1, True, 40)
    m.scrape_done(2, False)
    m.notifier_up("smtp", False)
    m.notifier_up("webhook", True)
    m.event("proxy.pool_low")
    m.credits_spent(3)
    m.plugin_error("crashy")
    return m


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = m.exposition()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, frozenset(labels.items()))]


def family_names(m: Metrics) -> set[str]:
    body, _ = m.exposition()
    names = set()
    for line in body.decode().splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])  # the 0.0.4 text format names counters with their _total
    return names


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_exposition_passes_promtool_check_metrics():
    """The real promtool lints the text exposition of a fully exercised registry without a complaint."""
    body, content_type = exercised().exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        check=False,
        input=body,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert done.stdout.strip() == b"" and done.stderr.strip() == b"", (done.stdout + done.stderr).decode()


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed"
)
def test_fresh_registry_passes_promtool():
    """A registry nothing was recorded on yet (empty labelled families) is still promtool-clean."""
    body, _ = Metrics().exposition()
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], check=False, input=body, capture_output=True, timeout=30
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_every_contract_family_is_exposed():
    """Each family CONTRACT.md names appears in the exposition, and FAMILIES lists exactly what is exposed."""
    names = family_names(exercised())
    for family in CONTRACT_FAMILIES:
        assert family in names
    ours = {n for n in names if n.startswith("proxy_pool_")}
    assert ours == set(FAMILIES)


def test_pool_gauge_is_read_at_scrape_time():
    """The proxies gauge reflects the callback's current answer at each scrape, with zeros for absent pairs."""
    counts = {("active", "http"): 3}
    m = Metrics(lambda: counts)
    assert value(m, "proxy_pool_proxies", status="active", protocol="http") == 3
    assert value(m, "proxy_pool_proxies", status="dead", protocol="socks4") == 0
    counts[("active", "http")] = 7
    counts[("dead", "socks4")] = 2
    assert value(m, "proxy_pool_proxies", status="active", protocol="http") == 7
    assert value(m, "proxy_pool_proxies", status="dead", protocol="socks4") == 2


def test_pool_callback_may_be_set_later_and_may_return_enums():
    """The lead can attach the selector's view after construction; enum keys become their values."""
    from pool.models import ProxyProtocol, ProxyStatus

    m = Metrics()
    m.pool_counts = lambda: {(ProxyStatus.ACTIVE, ProxyProtocol.SOCKS5): 4}
    assert value(m, "proxy_pool_proxies", status="active", protocol="socks5") == 4


def test_failing_pool_callback_does_not_break_the_scrape():
    """A raising callback drops the pool samples only; every other family is still served."""

    def broken() -> dict[tuple[str, str], int]:
        raise RuntimeError("selector gone")

    m = Metrics(broken)
    m.request_done("GET", "ok", 0.01)
    got = samples(m)
    key = frozenset({("method", "GET"), ("outcome", "ok"), ("protocol", "http")})
    assert got[("proxy_pool_gateway_requests_total", key)] == 1
    assert not any(name == "proxy_pool_proxies" for name, _ in got)


def test_country_gauge_names_unknown():
    """Active proxies by country; a proxy without a known country is counted as 'unknown'."""
    m = exercised()
    assert value(m, "proxy_pool_active_proxies_by_country", country="DE") == 2
    assert value(m, "proxy_pool_active_proxies_by_country", country="unknown") == 1


def test_recorded_values():
    """Each recording method moves its own series by the amount given."""
    m = exercised()
    assert value(m, "proxy_pool_gateway_requests_total", method="GET", outcome="ok", protocol="http") == 1
    assert value(m, "proxy_pool_gateway_requests_total", method="CONNECT", outcome="upstream_error", protocol="connect") == 1
    assert value(m, "proxy_pool_gateway_request_duration_seconds_count") == 2
    assert value(m, "proxy_pool_gateway_request_duration_seconds_bucket", le="0.1") == 1
    assert value(m, "proxy_pool_gateway_active_connections") == 1
    m.connection_closed()
    assert value(m, "proxy_pool_gateway_active_connections") == 0
    assert value(m, "proxy_pool_gateway_bytes_total", direction="upstream_to_client") == 1000
    assert value(m, "proxy_pool_upstream_failures_total", reason="refused") == 1
    assert value(m, "proxy_pool_checks_total", checker="tcp_connect", result="passed") == 1
    assert value(m, "proxy_pool_checks_total", checker="tcp_connect", result="failed") == 0
    assert value(m, "proxy_pool_check_duration_seconds_count", checker="tcp_connect") == 1
    assert value(m, "proxy_pool_check_duration_seconds_count", checker="http_anonymity") == 0
    assert value(m, "proxy_pool_scrapes_total", source="1", result="ok") == 1
    assert value(m, "proxy_pool_scrapes_total", source="2", result="failed") == 1
    assert value(m, "proxy_pool_scrapes_total", source="2", result="ok") == 0
    assert value(m, "proxy_pool_scrape_discovered_total", source="1") == 40
    assert value(m, "proxy_pool_notifier_up", notifier="smtp") == 0
    assert value(m, "proxy_pool_notifier_up", notifier="webhook") == 1
    assert value(m, "proxy_pool_events_total", type="proxy.pool_low") == 1
    assert value(m, "proxy_pool_credits_spent_total") == 3


def test_labels_stay_bounded_whatever_clients_send():
    """Unknown methods, outcomes, reasons and event types fold into 'other': the series count cannot grow."""
    m = Metrics()
    for i in range(500):
        m.request_done(f"M{i}", "ok", 0.01)
        m.request_done("GET", f"weird{i}", 0.01)
        m.upstream_failure(f"errno {i}")
        m.event(f"custom.{i}")
    got = samples(m)
    methods = {dict(labels)["method"] for name, labels in got if name == "proxy_pool_gateway_requests_total"}
    outcomes = {
        dict(labels)["outcome"] for name, labels in got if name == "proxy_pool_gateway_requests_total"
    }
    assert methods == {"other", "GET"} and methods <= set(METHODS) | {"other"}
    assert outcomes == {"ok", "other"}
    assert (
        got[("proxy_pool_gateway_requests_total", frozenset({("method", "other"), ("outcome", "ok"), ("protocol", "http")}))]
        == 500
    )
    assert got[("proxy_pool_upstream_failures_total", frozenset({("reason", "other")}))] == 500
    assert got[("proxy_pool_events_total", frozenset({("type", "other")}))] == 500


def test_bad_check_result_is_a_programming_error():
    """A check result outside passed/failed/skipped raises instead of inventing a label value."""
    with pytest.raises(ValueError):
        Metrics().check_done("tcp_connect", "maybe", 0.1)


def test_registered_source_starts_at_zero_and_forget_drops_it():
    """register_source creates both result series at 0; forget_source removes every series of it."""
    m = Metrics()
    m.register_source(9)
    assert value(m, "proxy_pool_scrapes_total", source="9", result="failed") == 0
    m.scrape_done(9, False)
    assert value(m, "proxy_pool_scrapes_total", source="9", result="failed") == 1
    m.forget_source(9)
    assert not any(dict(labels).get("source") == "9" for _, labels in samples(m))
    m.scrape_done(9, True, 1)  # a source re-added later starts afresh
    assert value(m, "proxy_pool_scrapes_total", source="9", result="ok") == 1


def test_on_event_listener_counts_events():
    """metrics.on_event fits EventBus.add_listener and counts by type."""
    from pool.events import EventBus

    m = Metrics()
    bus = EventBus()
    bus.add_listener(m.on_event)
    bus.emit_nowait(Event("source.failed", {"source_id": 1}))
    assert value(m, "proxy_pool_events_total", type="source.failed") == 1


def test_registries_are_independent():
    """Two Metrics objects never share a series (each owns its registry)."""
    a, b = Metrics(), Metrics()
    a.credits_spent(5)
    assert value(a, "proxy_pool_credits_spent_total") == 5
    assert value(b, "proxy_pool_credits_spent_total") == 0


def test_openmetrics_is_served_when_asked():
    """A scraper asking for OpenMetrics gets it, with the # EOF terminator."""
    body, content_type = exercised().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_summary_for_api_stats():
    """summary() reports the gateway and checker figures /api/stats shows."""
    s = exercised().summary()
    assert s["requests"] == {"ok": 1, "upstream_error": 1}
    assert s["active_connections"] == 1
    assert s["bytes"] == {"upstream_to_client": 1000, "client_to_upstream": 10}
    assert s["upstream_failures"] == {"refused": 1}
    assert s["checks"] == {"passed": 1, "failed": 0, "skipped": 1}
    assert s["credits_spent"] == 3


def test_request_metrics_carry_the_client_protocol():
    """http and connect follow from the method; SOCKS clients name theirs; anything else is 'other'."""
    m = Metrics()
    m.request_done("GET", "ok", 0.01)
    m.request_done("CONNECT", "ok", 0.01)
    m.request_done("CONNECT", "ok", 0.01, "socks5")
    m.request_done("CONNECT", "forbidden", 0.0, "socks4")
    m.request_done("CONNECT", "ok", 0.0, "gopher")
    assert value(m, "proxy_pool_gateway_requests_total", method="GET", outcome="ok", protocol="http") == 1
    assert value(m, "proxy_pool_gateway_requests_total", method="CONNECT", outcome="ok", protocol="connect") == 1
    assert value(m, "proxy_pool_gateway_requests_total", method="CONNECT", outcome="ok", protocol="socks5") == 1
    assert value(m, "proxy_pool_gateway_requests_total", method="CONNECT", outcome="forbidden", protocol="socks4") == 1
    assert value(m, "proxy_pool_gateway_requests_total", method="CONNECT", outcome="ok", protocol="other") == 1
