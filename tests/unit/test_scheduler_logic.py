"""The scheduler's decisions as pure functions of a fixed clock: when a source runs, when it is stale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pool.models import ProxySource
from pool.scheduler import DEFAULT_SCHEDULE, is_stale, next_run, source_due

T0 = datetime(2024, 3, 14, 12, 0, tzinfo=UTC)  # a Thursday, on the hour


def test_never_run_source_is_due_now() -> None:
    """A source that never ran runs at once, whatever its schedule."""
    assert next_run("0 3 * * *", None, T0) == T0
    assert source_due("0 3 * * *", None, T0)


@pytest.mark.parametrize(
    ("schedule", "last", "expected"),
    [
        ("*/30 * * * *", T0, T0 + timedelta(minutes=30)),
        ("*/30 * * * *", T0 + timedelta(minutes=7), T0 + timedelta(minutes=30)),
        ("0 * * * *", T0 + timedelta(minutes=59, seconds=59), T0 + timedelta(hours=1)),
        ("0 3 * * *", T0, datetime(2024, 3, 15, 3, 0, tzinfo=UTC)),
        ("15 6 * * 1", T0, datetime(2024, 3, 18, 6, 15, tzinfo=UTC)),  # next Monday
        ("0 0 1 * *", T0, datetime(2024, 4, 1, tzinfo=UTC)),
    ],
)
def test_next_run_follows_the_cron_expression(schedule: str, last: datetime, expected: datetime) -> None:
    """The next run is the cron expression's next fire time after the last run."""
    assert next_run(schedule, last, T0 + timedelta(days=30)) == expected


def test_due_exactly_at_the_fire_time_and_not_a_second_before() -> None:
    """A source ran at 12:00 on */30: not due at 12:29:59, due at 12:30:00 and after."""
    schedule = "*/30 * * * *"
    assert not source_due(schedule, T0, T0 + timedelta(minutes=29, seconds=59))
    assert source_due(schedule, T0, T0 + timedelta(minutes=30))
    assert source_due(schedule, T0, T0 + timedelta(hours=5))


def test_a_run_between_fire_times_waits_for_the_next_one() -> None:
    """A manual scrape at 12:10 on */30 makes the next run 12:30, not 12:40."""
    last = T0 + timedelta(minutes=10)
    assert not source_due("*/30 * * * *", last, T0 + timedelta(minutes=29))
    assert source_due("*/30 * * * *", last, T0 + timedelta(minutes=30))


def test_daily_schedule_is_not_due_again_the_same_day() -> None:
    """A daily 03:00 source that ran at 03:00 waits until 03:00 the next day."""
    last = datetime(2024, 3, 14, 3, 0, tzinfo=UTC)
    assert not source_due("0 3 * * *", last, datetime(2024, 3, 14, 23, 59, tzinfo=UTC))
    assert source_due("0 3 * * *", last, datetime(2024, 3, 15, 3, 0, tzinfo=UTC))


def test_default_schedule_is_valid_cron() -> None:
    """The fallback schedule is a cron expression croniter accepts, every 30 minutes."""
    assert next_run(DEFAULT_SCHEDULE, T0, T0) == T0 + timedelta(minutes=30)


def _source(created: datetime, success: datetime | None) -> ProxySource:
    return ProxySource(id=1, url="http://127.0.0.1/list.txt", created_at=created, last_success_at=success)


def test_stale_counts_from_the_last_success() -> None:
    """24 h after the last success a source is stale, with the hours since that success."""
    source = _source(T0 - timedelta(days=10), T0)
    assert is_stale(source, 24, T0 + timedelta(hours=23, minutes=59)) is None
    assert is_stale(source, 24, T0 + timedelta(hours=24)) == pytest.approx(24.0)
    assert is_stale(source, 24, T0 + timedelta(hours=30)) == pytest.approx(30.0)


def test_stale_counts_from_creation_when_it_never_succeeded() -> None:
    """A source that never succeeded is stale stale_hours after it was added, not at once."""
    source = _source(T0, None)
    assert is_stale(source, 6, T0 + timedelta(hours=5)) is None
    assert is_stale(source, 6, T0 + timedelta(hours=6, minutes=30)) == pytest.approx(6.5)


def test_failures_do_not_reset_staleness() -> None:
    """A failed run moves last_run_at but not last_success_at, so the source still goes stale."""
    source = _source(T0 - timedelta(days=3), T0)
    source.last_run_at = T0 + timedelta(hours=47)
    source.last_error = "HTTP 500 Internal Server Error"
    assert is_stale(source, 24, T0 + timedelta(hours=48)) == pytest.approx(48.0)


def test_fractional_stale_hours() -> None:
    """stale_hours may be a fraction (e.g. 0.5 for a fast-moving list)."""
    source = _source(T0 - timedelta(days=1), T0)
    assert is_stale(source, 0.5, T0 + timedelta(minutes=29)) is None
    assert is_stale(source, 0.5, T0 + timedelta(minutes=30)) == pytest.approx(0.5)
