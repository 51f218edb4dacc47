"""The dashboard's pure parts: session cookies, the sampled history, percentiles, masked event payloads."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from gateway.admin.history import EventLog, History, _percentile, mask_secrets
from gateway.admin.sessions import Sessions
from gateway.metrics import REQUEST_BUCKETS, Metrics
from pool.models import Event, ProxyStatus
from pool.selector import Selector
from tests.unit.test_selector import make_proxy

TOKEN = "the-admin-token"


def test_a_cookie_is_genuine_only_under_the_token_that_signed_it():
    sessions = Sessions()
    cookie = sessions.issue(TOKEN)
    assert sessions.valid(cookie, TOKEN)
    assert TOKEN not in cookie
    assert not sessions.valid(cookie, TOKEN + "x")  # the admin token changed: every cookie is void
    assert Sessions().valid(cookie, TOKEN)  # another process (a worker) with the same token accepts it
    assert sessions.issue(TOKEN) != cookie


def test_forged_tampered_and_expired_cookies_are_refused():
    sessions = Sessions()
    version, sid, expires, mac = sessions.issue(TOKEN).split(".")
    for forged in (
        None,
        "",
        "garbage",
        f"{version}.{sid}.{int(expires) + 3600}.{mac}",  # a longer life
        f"{version}.other{sid}.{expires}.{mac}",  # another id
        f"{version}.{sid}.{expires}.{mac[:-1]}{'B' if mac.endswith('A') else 'A'}",  # one character off
        f"v2.{sid}.{expires}.{mac}",
        f"{version}.{sid}.{expires}.{mac}.x",
        f"{version}.{sid}.-5.{mac}",
        "v1." + "a" * 300 + ".1.x",
    ):
        assert not sessions.valid(forged, TOKEN), forged
    assert not sessions.valid(Sessions(seconds=-1).issue(TOKEN), TOKEN)


async def test_logout_ends_only_that_session_and_remembers_a_bounded_number():
    sessions = Sessions(keep=3)
    cookies = [sessions.issue(TOKEN) for _ in range(5)]
    await sessions.end(cookies[0], TOKEN)
    assert not sessions.valid(cookies[0], TOKEN)
    assert all(sessions.valid(c, TOKEN) for c in cookies[1:])
    await sessions.end("forged", TOKEN)  # not remembered: only genuine cookies take a place
    await sessions.end(Sessions().issue("another token"), TOKEN)
    assert len(sessions._ended) == 1
    for cookie in cookies[1:]:
        await sessions.end(cookie, TOKEN)
    assert len(sessions._ended) == 3


async def test_a_logout_on_one_process_ends_the_session_on_every_process_sharing_the_store(tmp_path):
    """Two workers' Sessions on one database: a logout on the first is refused by the second at its next
    check (and remembered there); other sessions and forged cookies leave no row behind."""
    from pool.store import SqliteStore

    store = await SqliteStore.open(tmp_path / "pool.db")
    try:
        first, second = Sessions(store=store), Sessions(store=store)
        ended, kept = first.issue(TOKEN), second.issue(TOKEN)
        assert await second.alive(ended, TOKEN) and await first.alive(kept, TOKEN)
        await first.end(ended, TOKEN)
        assert second.valid(ended, TOKEN)  # it has not looked yet
        assert not await second.alive(ended, TOKEN)
        assert not second.valid(ended, TOKEN)  # learnt once: no second read
        assert await second.alive(kept, TOKEN) and await first.alive(kept, TOKEN)
        await first.end("v1.forged.9999999999.x", TOKEN)
        assert await store.get_mark("dashboard-session-ended:forged") is None
        await first.end(ended, TOKEN)  # twice: no error
    finally:
        await store.close()


def test_event_payloads_are_masked():
    payload = {
        "source": "http://u:pw@example.com/list?key=abc&x=1",
        "error": "fetching https://TOKEN123@lists.example/p failed",
        "password": "p",
        "api_key": 12345678,
        "count": 3,
        "nested": [{"token": "t"}],
    }
    masked = mask_secrets(payload)
    assert masked["source"] == "http://u:***@example.com/list?key=***&x=***"
    assert masked["error"] == "fetching https://***@lists.example/p failed"
    assert masked["password"] == "***" and masked["nested"] == [{"token": "***"}]
    assert masked["count"] == 3 and masked["api_key"] == 12345678


def test_the_event_log_keeps_the_last_events_newest_first():
    log = EventLog(keep=3)
    for i in range(5):
        log(Event("proxy.new_batch", {"count": i, "source": f"http://a:b{i}@x.example/"}))
    latest = log.latest()
    assert [e["payload"]["count"] for e in latest] == [4, 3, 2]
    assert all("b4" not in e["payload"]["source"] for e in latest)


def test_percentiles_interpolate_inside_the_bucket():
    counts = [0] * (len(REQUEST_BUCKETS) + 1)
    assert _percentile(counts, 0.5) is None
    counts[0] = 10  # all ten under 5 ms
    assert _percentile(counts, 0.5) == 2.5
    counts[-1] = 90  # ninety past the last bound
    assert _percentile(counts, 0.95) == REQUEST_BUCKETS[-1] * 1000


@given(st.lists(st.integers(0, 50), min_size=len(REQUEST_BUCKETS) + 1, max_size=len(REQUEST_BUCKETS) + 1))
def test_percentiles_are_ordered_and_bounded(counts):
    p50, p95, p99 = (_percentile(counts, q) for q in (0.5, 0.95, 0.99))
    if sum(counts) == 0:
        assert p50 is p95 is p99 is None
    else:
        assert p50 is not None and p95 is not None and p99 is not None
        assert 0 <= p50 <= p95 <= p99 <= REQUEST_BUCKETS[-1] * 1000


def fake_pool(selector: Selector, metrics: Metrics) -> SimpleNamespace:
    return SimpleNamespace(
        selector=selector,
        metrics=metrics,
        pipeline=SimpleNamespace(backlog=7),
        registry=SimpleNamespace(checkers=[SimpleNamespace(name="tcp_connect"), SimpleNamespace(name="never_ran")]),
    )


def test_history_samples_rates_from_the_metrics_counters():
    selector = Selector()
    selector.load([make_proxy(), make_proxy(), make_proxy(status=ProxyStatus.DEAD), make_proxy(status=ProxyStatus.NEW)])
    metrics = Metrics(pool_counts=selector.counts, process_metrics=False)
    now = [1000.0]
    history = History(fake_pool(selector, metrics), interval=5.0, hours=1 / 360, clock=lambda: now[0])
    first = history.sample()
    assert first["rps_ok"] == 0 and first["total"] == 4 and first["active"] == 2
    assert first["dead"] == 1 and first["new"] == 1 and first["backlog"] == 7

    for _ in range(40):
        metrics.request_done("GET", "ok", 0.003)
    for _ in range(10):
        metrics.request_done("CONNECT", "upstream_error", 0.2, protocol="connect")
    metrics.bytes("upstream_to_client", 5000)
    metrics.connection_opened()
    metrics.check_done("tcp_connect", "passed", 0.01)
    metrics.check_done("tcp_connect", "failed", 0.01)
    now[0] += 10.0
    point = history.sample()
    assert point["rps_ok"] == 4.0 and point["rps_failed"] == 1.0
    assert point["rps_by_outcome"] == {"ok": 4.0, "upstream_error": 1.0}
    assert point["p50_ms"] is not None and point["p50_ms"] <= 5.0
    assert point["p99_ms"] is not None and 100.0 <= point["p99_ms"] <= 250.0
    assert point["bytes_down_ps"] == 500.0 and point["bytes_up_ps"] == 0
    assert point["connections"] == 1 and point["checks_ps"] == 0.2
    rates = {r["checker"]: r for r in history.checker_rates()}
    assert rates["tcp_connect"]["pass_rate"] == 0.5 and rates["never_ran"]["pass_rate"] is None

    for _ in range(20):  # bounded: one hour / 360 at 5 s is 2 points
        now[0] += 5.0
        history.sample()
    assert len(history.points) == 2
