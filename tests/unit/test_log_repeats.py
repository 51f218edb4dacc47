"""Repeated warnings are rate-limited per message template (gateway.logs.RepeatLimit); INFO never is."""

from __future__ import annotations

import logging

from gateway.logs import RepeatLimit


def record(msg: str, level: int = logging.WARNING, *args: object) -> logging.LogRecord:
    return logging.LogRecord("proxy_pool.x", level, __file__, 1, msg, args, None)


def test_the_same_warning_passes_a_burst_per_window_then_says_how_many_were_dropped() -> None:
    now = [0.0]
    limit = RepeatLimit(burst=3, window=60.0, clock=lambda: now[0])
    passed = [limit.filter(record("check of %s failed", logging.WARNING, f"p{i}")) for i in range(1000)]
    assert passed.count(True) == 3
    assert limit.filter(record("another template"))  # other messages are not held up
    assert all(limit.filter(record("access line %s", logging.INFO, i)) for i in range(100))
    now[0] = 61.0
    again = record("check of %s failed", logging.WARNING, "p0")
    assert limit.filter(again)
    assert again.getMessage() == "check of p0 failed (997 more like this in the last 60 s not logged)"


def test_memory_is_bounded() -> None:
    limit = RepeatLimit(keys=10)
    for i in range(100):
        limit.filter(record(f"distinct {i}"))
    assert len(limit._seen) <= 10


def test_preformatted_messages_are_known_by_their_first_line() -> None:
    """asyncio logs accept failures as text naming the socket: one key for all of them."""
    limit = RepeatLimit(burst=2)
    lines = [f"socket.accept() out of system resource\nsocket: <socket fd={fd}>" for fd in range(10, 20)]
    assert [limit.filter(record(line, logging.ERROR)) for line in lines].count(True) == 2
