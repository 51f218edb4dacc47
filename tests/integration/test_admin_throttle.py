"""Wrong admin tokens throttled per peer and in all, on real sockets: client addresses 127.0.0.x
against one admin port; the clock is injected and refused answers are held 0 s, nothing sleeps."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from gateway.admin.guard import THROTTLE
from gateway.admin.sessions import COOKIE
from gateway.app import ProxyPool
from tests.integration.conftest import PoolFactory

pytestmark = pytest.mark.timeout(60)
TOKEN = "operator-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def peer(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections leave from ``address`` (a distinct peer to the admin)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as client:
        yield client


def url(pool: ProxyPool, path: str) -> str:
    return "http://%s:%d%s" % (*pool.admin_address, path)  # type: ignore[misc]


async def bearer(client: aiohttp.ClientSession, pool: ProxyPool, token: str) -> tuple[int, str | None, str]:
    async with client.get(url(pool, "/api/stats"), headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.text()


async def login(client: aiohttp.ClientSession, pool: ProxyPool, token: str) -> tuple[int, str | None, str]:
    async with client.post(url(pool, "/login"), json={"token": token}) as resp:
        cookie = resp.cookies.get(COOKIE)
        return resp.status, resp.headers.get("Retry-After"), cookie.value if cookie is not None else ""


def throttled(pool: ProxyPool) -> Clock:
    """The admin's throttle on an injected clock, its refused answers held 0 s; the clock."""
    throttle = pool.admin_runner.app[THROTTLE]
    throttle.hold = 0.0
    clock = throttle.clock = Clock()
    return clock


async def test_wrong_bearer_tokens_lock_out_their_peer_only(make_pool: PoolFactory, caplog: pytest.LogCaptureFixture) -> None:
    """127.0.0.2 guesses: 401 four times, then 429 with Retry-After 60 for its wrong tokens; 127.0.0.1's
    right token works all along.  Once the wait is over .2's wrong tokens are 401 again; a second
    lockout lasts 120 s.  No token, right or wrong, is in the log."""
    caplog.set_level(logging.DEBUG)
    pool = await make_pool(admin={"token": TOKEN})
    clock = throttled(pool)
    async with peer("127.0.0.2") as attacker, peer("127.0.0.1") as operator:
        for n in range(4):
            assert (await bearer(attacker, pool, f"guess-{n}"))[0] == 401
        status, retry_after, body = await bearer(attacker, pool, "guess-4")
        assert (status, retry_after) == (429, "60") and "try again in 60 s" in body
        assert (await bearer(attacker, pool, "guess-5"))[:2] == (429, "60")
        assert (await bearer(operator, pool, TOKEN))[0] == 200
        assert (await bearer(operator, pool, "one-typo"))[0] == 401  # its own count, far from a lockout
        assert (await bearer(operator, pool, TOKEN))[0] == 200
        clock.now += 59
        assert (await bearer(attacker, pool, "guess-6"))[:2] == (429, "1")
        clock.now += 1
        assert (await bearer(attacker, pool, TOKEN))[0] == 200
        for n in range(4):
            assert (await bearer(attacker, pool, f"again-{n}"))[0] == 401
        assert (await bearer(attacker, pool, "again-4"))[:2] == (429, "60")  # the right token reset the steps
        clock.now += 60
        for n in range(5):
            status, retry_after, _ = await bearer(attacker, pool, f"more-{n}")
        assert (status, retry_after) == (429, "120")
    assert TOKEN not in caplog.text and "guess-" not in caplog.text and "127.0.0.2" in caplog.text


async def test_wrong_login_tokens_share_the_count_and_a_session_outlives_the_lockout(make_pool: PoolFactory) -> None:
    """The dashboard's login form counts as the bearer token does (one count per peer for both): five wrong
    logins from .2 and its sixth, wrong too, gets 429 and no cookie, while .1 logs in.  A session cookie
    that .2 got before keeps working while its wrong tokens are refused (a cookie is not guessable)."""
    pool = await make_pool(admin={"token": TOKEN})
    throttled(pool)
    async with peer("127.0.0.2") as attacker, peer("127.0.0.1") as operator:
        status, _, cookie = await login(attacker, pool, TOKEN)
        assert status == 204 and cookie
        for n in range(3):
            assert (await login(attacker, pool, f"guess-{n}"))[0] == 401
        assert (await bearer(attacker, pool, "guess-3"))[0] == 401
        assert (await login(attacker, pool, "guess-4"))[:2] == (429, "60")
        assert (await login(attacker, pool, "guess-5")) == (429, "60", "")
        assert (await bearer(attacker, pool, "guess-6"))[0] == 429
        async with attacker.get(url(pool, "/api/stats"), headers={"Cookie": f"{COOKIE}={cookie}"}) as resp:
            assert resp.status == 200
        status, _, operator_cookie = await login(operator, pool, TOKEN)
        assert status == 204 and operator_cookie


async def test_the_right_token_is_never_refused(make_pool: PoolFactory) -> None:
    """A local process guessing from the operator's own address (every local process is 127.0.0.1)
    cannot lock the operator out: the right token and the login keep working; only the wrong guesses
    get 429 (issue 22 #8)."""
    pool = await make_pool(admin={"token": TOKEN})
    throttled(pool)
    async with peer("127.0.0.1") as local:
        for n in range(5):
            await bearer(local, pool, f"guess-{n}")
        assert (await bearer(local, pool, "guess-5"))[:2] == (429, "60")
        assert (await bearer(local, pool, TOKEN))[0] == 200
        status, _, cookie = await login(local, pool, TOKEN)
        assert status == 204 and cookie
        assert (await bearer(local, pool, "guess-6"))[0] == 401  # the right token cleared the count


async def test_wrong_tokens_from_many_addresses_share_a_budget(make_pool: PoolFactory) -> None:
    """Wrong tokens from many loopback addresses, none past its own limit, exhaust the global budget:
    a wrong token from a fresh address gets 429, the right one still passes (issue 22 #14)."""
    pool = await make_pool(admin={"token": TOKEN})
    throttled(pool)
    pool.admin_runner.app[THROTTLE].global_limit = 13  # the fresh address offers the thirteenth
    for host in range(2, 6):
        async with peer(f"127.0.3.{host}") as guesser:
            for n in range(3):
                assert (await bearer(guesser, pool, f"guess-{host}-{n}"))[0] == 401
    async with peer("127.0.3.9") as fresh:
        assert (await bearer(fresh, pool, "guess-fresh"))[:2] == (429, "60")
        assert (await bearer(fresh, pool, TOKEN))[0] == 200
