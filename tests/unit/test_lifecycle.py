"""The proxy lifecycle: what a check run does to state and figures, when to look again, when to let go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import CheckerSettings
from pool.lifecycle import (
    HISTORY,
    LATENCY_WEIGHT,
    LEGAL,
    RunVerdict,
    apply_run,
    is_due,
    next_check_at,
    should_remove,
)
from pool.models import AnonymityLevel, Proxy, ProxyStatus, UpstreamURL

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
CHECKER = CheckerSettings(
    recheck_interval=600, dead_backoff=100, dead_backoff_max=1000, remove_dead_after=3600
)


def proxy(**kwargs) -> Proxy:
    return Proxy(1, UpstreamURL.parse("http://10.0.0.1:3128"), **kwargs)


def passed(at: datetime = T0, **kwargs) -> RunVerdict:
    return RunVerdict(passed=True, at=at, **kwargs)


def failed(at: datetime = T0, **kwargs) -> RunVerdict:
    return RunVerdict(passed=False, at=at, failed_check="tcp_connect", detail="refused", **kwargs)


# -- apply_run -------------------------------------------------------------------------------------


def test_new_proxy_passing_becomes_active_with_its_figures():
    """A first passing run: NEW -> ACTIVE, latency, exit address, anonymity and country recorded."""
    p = proxy()
    before = apply_run(
        p, passed(latency_ms=120.0, exit_ip="203.0.113.9", anonymity=AnonymityLevel.ELITE, country="DE")
    )
    assert before is ProxyStatus.NEW
    assert p.status is ProxyStatus.ACTIVE
    assert p.latency_ms == 120.0
    assert (p.exit_ip, p.anonymity, p.country) == ("203.0.113.9", AnonymityLevel.ELITE, "DE")
    assert p.last_checked == T0
    assert p.success_ratio == 1.0 and p.consecutive_failures == 0 and p.dead_since is None


def test_new_proxy_failing_becomes_dead_since_then():
    """A failing run: NEW -> DEAD, dead_since set, one consecutive failure."""
    p = proxy()
    assert apply_run(p, failed()) is ProxyStatus.NEW
    assert p.status is ProxyStatus.DEAD
    assert p.dead_since == T0 and p.consecutive_failures == 1 and p.success_ratio == 0.0


def test_dead_since_is_the_first_failure_of_the_run():
    """Repeated failures keep the first dead_since and count up."""
    p = proxy()
    for i in range(3):
        apply_run(p, failed(T0 + timedelta(hours=i)))
    assert p.dead_since == T0 and p.consecutive_failures == 3
    assert p.last_checked == T0 + timedelta(hours=2)


def test_dead_proxy_recovers_and_forgets_its_death():
    """A passing run revives a dead proxy: failures reset, dead_since cleared."""
    p = proxy()
    apply_run(p, failed())
    apply_run(p, failed())
    assert apply_run(p, passed(T0 + timedelta(hours=1))) is ProxyStatus.DEAD
    assert p.status is ProxyStatus.ACTIVE and p.consecutive_failures == 0 and p.dead_since is None


def test_active_proxy_failing_dies():
    """ACTIVE -> DEAD on a failed run; figures learned before are kept."""
    p = proxy()
    apply_run(p, passed(country="FR", latency_ms=50.0))
    apply_run(p, failed(T0 + timedelta(minutes=10)))
    assert p.status is ProxyStatus.DEAD and p.country == "FR" and p.latency_ms == 50.0


def test_run_without_verdict_changes_no_state():
    """Every judge down: no verdict; status, history and figures stay, only last_checked moves."""
    p = proxy()
    apply_run(p, passed(latency_ms=10.0))
    history = p.check_history
    later = T0 + timedelta(minutes=5)
    assert apply_run(p, RunVerdict(passed=None, at=later)) is ProxyStatus.ACTIVE
    assert p.status is ProxyStatus.ACTIVE and p.check_history == history and p.success_ratio == 1.0
    assert p.last_checked == later


def test_latency_is_a_moving_average():
    """Latency moves towards new measurements by LATENCY_WEIGHT; a run without latency leaves it."""
    p = proxy()
    apply_run(p, passed(latency_ms=100.0))
    apply_run(p, passed(latency_ms=200.0))
    assert p.latency_ms == pytest.approx((1 - LATENCY_WEIGHT) * 100.0 + LATENCY_WEIGHT * 200.0)
    value = p.latency_ms
    apply_run(p, passed(latency_ms=None))
    assert p.latency_ms == value


def test_passing_run_without_a_field_keeps_the_old_value():
    """A run that learned no country (no GeoIP db) does not erase the known one."""
    p = proxy()
    apply_run(p, passed(country="DE", exit_ip="1.1.1.1", anonymity=AnonymityLevel.ANONYMOUS))
    apply_run(p, passed())
    assert (p.country, p.exit_ip, p.anonymity) == ("DE", "1.1.1.1", AnonymityLevel.ANONYMOUS)


@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_success_ratio_over_recent_checks(outcomes):
    """Property: the ratio is the share of passes among the last HISTORY verdicts."""
    p = proxy()
    for i, ok in enumerate(outcomes):
        apply_run(p, (passed if ok else failed)(T0 + timedelta(minutes=i)))
    recent = outcomes[-HISTORY:]
    assert p.success_ratio == pytest.approx(sum(recent) / len(recent))
    assert len(p.check_history) == len(recent)
    assert p.status is (ProxyStatus.ACTIVE if outcomes[-1] else ProxyStatus.DEAD)
    trailing = len(outcomes) - len("".join("1" if o else "0" for o in outcomes).rstrip("0"))
    assert p.consecutive_failures == trailing


def test_active_proxy_cannot_go_back_to_new():
    """States never return to NEW (the legal-transition table)."""
    assert ProxyStatus.NEW not in LEGAL[ProxyStatus.ACTIVE]
    assert ProxyStatus.NEW not in LEGAL[ProxyStatus.DEAD]


# -- when to look again ----------------------------------------------------------------------------


def test_never_checked_is_due_now():
    """A proxy never checked is due at once."""
    p = proxy()
    assert next_check_at(p, CHECKER) is None
    assert is_due(p, CHECKER, T0)


def test_active_rechecked_every_interval():
    """Active proxies come back after recheck_interval."""
    p = proxy()
    apply_run(p, passed())
    assert next_check_at(p, CHECKER) == T0 + timedelta(seconds=600)
    assert not is_due(p, CHECKER, T0 + timedelta(seconds=599))
    assert is_due(p, CHECKER, T0 + timedelta(seconds=600))


def test_dead_backoff_grows_and_is_capped():
    """Dead proxies wait dead_backoff, then twice, four times ... up to dead_backoff_max."""
    p = proxy()
    waits = []
    for _ in range(8):
        apply_run(p, failed(T0))
        waits.append((next_check_at(p, CHECKER) - T0).total_seconds())
    assert waits == [100, 200, 400, 800, 1000, 1000, 1000, 1000]


def test_backoff_does_not_overflow_after_very_many_failures():
    """A proxy dead for ages still gets a finite, capped wait."""
    p = proxy(status=ProxyStatus.DEAD, consecutive_failures=10_000, last_checked=T0, dead_since=T0)
    assert next_check_at(p, CHECKER) == T0 + timedelta(seconds=1000)


def test_new_without_verdict_retried_after_the_shorter_interval():
    """A NEW proxy whose run had no verdict waits min(recheck_interval, dead_backoff)."""
    p = proxy()
    apply_run(p, RunVerdict(passed=None, at=T0))
    assert p.status is ProxyStatus.NEW
    assert next_check_at(p, CHECKER) == T0 + timedelta(seconds=100)


# -- when to let go --------------------------------------------------------------------------------


def test_dead_removed_after_remove_dead_after():
    """A dead proxy is removed once it has been dead for remove_dead_after seconds."""
    p = proxy()
    apply_run(p, failed(T0))
    apply_run(p, failed(T0 + timedelta(seconds=3000)))
    assert not should_remove(p, CHECKER, T0 + timedelta(seconds=3599))
    assert should_remove(p, CHECKER, T0 + timedelta(seconds=3600))


def test_active_and_new_are_never_removed():
    """Only dead proxies are removed, however old."""
    far = T0 + timedelta(days=365)
    fresh = proxy()
    active = proxy()
    apply_run(active, passed(T0))
    assert not should_remove(fresh, CHECKER, far)
    assert not should_remove(active, CHECKER, far)


def test_revived_proxy_starts_a_new_dead_clock():
    """Dying again after a recovery counts from the new death, not the first one."""
    p = proxy()
    apply_run(p, failed(T0))
    apply_run(p, passed(T0 + timedelta(seconds=3000)))
    apply_run(p, failed(T0 + timedelta(seconds=3500)))
    assert not should_remove(p, CHECKER, T0 + timedelta(seconds=3600))
    assert should_remove(p, CHECKER, T0 + timedelta(seconds=3500 + 3600))
