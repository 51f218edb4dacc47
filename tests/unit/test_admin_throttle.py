"""gateway.admin.throttle.TokenThrottle on an injected clock: lockouts per peer, growing, bounded."""

from __future__ import annotations

import logging

import pytest

from gateway.admin.throttle import TokenThrottle

TOKEN = "the-right-token"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_five_wrong_in_a_minute_lock_the_peer_out_and_each_lockout_doubles() -> None:
    clock = Clock()
    throttle = TokenThrottle(clock=clock)
    for _ in range(4):
        assert throttle.attempt("10.0.0.1", "guess", TOKEN) == (False, None)
    assert throttle.attempt("10.0.0.1", "guess", TOKEN) == (False, 60)
    assert throttle.attempt("10.0.0.2", TOKEN, TOKEN) == (True, None)  # another peer: untouched
    clock.now += 59.5
    assert throttle.retry_after("10.0.0.1") == 1
    clock.now += 0.5
    for _ in range(4):
        assert throttle.attempt("10.0.0.1", "guess", TOKEN) == (False, None)
    assert throttle.attempt("10.0.0.1", "guess", TOKEN) == (False, 120)
    clock.now += 120
    for _ in range(5):
        wait = throttle.attempt("10.0.0.1", "guess", TOKEN)[1]
    assert wait == 240
    clock.now += 240
    assert throttle.attempt("10.0.0.1", TOKEN, TOKEN) == (True, None)  # a right token clears the record
    assert len(throttle) == 0
    for _ in range(4):
        assert throttle.attempt("10.0.0.1", "guess", TOKEN) == (False, None)
    assert throttle.attempt("10.0.0.1", "guess", TOKEN) == (False, 60)  # back to the first step


def test_failures_spread_over_more_than_the_window_never_lock_out() -> None:
    clock = Clock()
    throttle = TokenThrottle(clock=clock)
    for _ in range(50):
        assert throttle.attempt("10.0.0.1", "guess", TOKEN) == (False, None)
        clock.now += 15.01  # four per minute
    assert throttle.retry_after("10.0.0.1") is None


def test_the_longest_lockout_is_capped_and_memory_is_bounded() -> None:
    clock = Clock()
    throttle = TokenThrottle(clock=clock, keep=100)
    for _ in range(12):
        for _ in range(5):
            wait = throttle.attempt("10.0.0.1", "guess", TOKEN)[1]
        assert wait is not None and wait <= 3600
        clock.now += wait
    assert wait == 3600
    for n in range(1000):
        throttle.attempt(f"10.1.{n // 250}.{n % 250}", "guess", TOKEN)
    assert len(throttle) <= 100
    clock.now += 3600 + 61
    throttle.attempt("10.9.9.9", "guess", TOKEN)
    assert len(throttle) == 1  # the quiet ones are forgotten


def test_the_log_names_the_peer_never_a_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    throttle = TokenThrottle(clock=Clock())
    for n in range(5):
        throttle.attempt("10.0.0.1", f"guess-{n}-SECRETISH", TOKEN)
    assert "10.0.0.1" in caplog.text and "refused for 60 s" in caplog.text
    assert "SECRETISH" not in caplog.text and TOKEN not in caplog.text


def test_the_right_token_always_passes_and_clears_the_record() -> None:
    """A locked-out peer (every local process is 127.0.0.1, the operator's too) still gets in with the
    right token; only its wrong ones are refused (issue 22 #8)."""
    throttle = TokenThrottle(clock=Clock())
    for _ in range(5):
        throttle.attempt("127.0.0.1", "guess", TOKEN)
    assert throttle.attempt("127.0.0.1", "guess", TOKEN) == (False, 60)
    assert throttle.attempt("127.0.0.1", TOKEN, TOKEN) == (True, None)
    assert throttle.retry_after("127.0.0.1") is None


def test_wrong_tokens_share_a_global_budget() -> None:
    """Past ``global_limit`` wrong tokens within the window from all peers, every wrong token is
    refused, from any address; the right token still passes; the window frees it (issue 22 #14)."""
    clock = Clock()
    throttle = TokenThrottle(clock=clock, global_limit=12)
    for n in range(11):
        assert throttle.attempt(f"127.0.1.{n}", "guess", TOKEN) == (False, None)
    assert throttle.attempt("127.0.1.11", "guess", TOKEN) == (False, 60)  # the twelfth
    assert throttle.attempt("127.0.2.1", "guess", TOKEN) == (False, 60)
    assert throttle.attempt("127.0.2.2", TOKEN, TOKEN) == (True, None)
    clock.now += 61
    assert throttle.attempt("127.0.2.3", "guess", TOKEN) == (False, None)
