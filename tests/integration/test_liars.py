"""Lying proxies (tests/support/liars.py) beside honest ones, with default checker settings on loopback:
every liar ends dead with the detail that names its lie, every honest proxy keeps its grade."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from config import Settings
from plugins import CheckContext, Proxy, UpstreamURL
from plugins.builtin.checkers import http_anonymity
from tests.support.grade_proxies import grade_proxy
from tests.support.judges import Judge, running_judge
from tests.support.liars import liar

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def judge() -> AsyncIterator[Judge]:
    async with running_judge() as j:
        yield j


def _proxy(url: str) -> Proxy:
    return Proxy(1, UpstreamURL.parse(url))


async def test_fake_judge_answer_is_not_genuine(client, judge):
    """A proxy answering the judge request itself (canned httpbin page) fails: the token is missing."""
    checker = http_anonymity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with liar("fake_judge", "127.0.0.31") as fake:
        result = await checker.check(_proxy(fake.url()), CheckContext(client, judges=[judge.json_url]))
    assert fake.lies >= 1
    assert not result.passed and not result.skipped
    assert "does not echo the check token" in result.detail
    assert judge.hits("/get", "127.0.0.31") == 0  # it forwarded nothing


async def test_reflecting_fake_judge_is_caught_by_a_second_judge(client, judge):
    """A fake judge that reflects the token but makes up the exit address tells two judges two stories."""
    checker = http_anonymity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with liar("reflecting_judge", "127.0.0.32") as fake:
        result = await checker.check(
            _proxy(fake.url()), CheckContext(client, judges=[judge.json_url, judge.azenv_url])
        )
    assert not result.passed and not result.skipped
    assert result.detail.startswith("exit address disagrees:"), result.detail


async def test_two_judges_agree_on_an_honest_exit(client, judge):
    """An honest proxy shows both judges the same exit: it passes, and the second judge is named."""
    checker = http_anonymity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with grade_proxy("anonymous", "127.0.0.33") as gp:
        result = await checker.check(_proxy(gp.url()), CheckContext(client, judges=[judge.json_url, judge.azenv_url]))
    assert result.passed, result.detail
    assert result.metadata["exit_ip"] == "127.0.0.33"
    assert result.metadata["agreed_by"] in (judge.json_url, judge.azenv_url)
    assert result.metadata["agreed_by"] != result.metadata["judge"]


async def test_judge_that_does_not_echo_tokens_is_unhealthy_not_blamed(client, judge):
    """A configured judge that cannot echo the token (a static page) is skipped: no proxy fails for it."""
    checker = http_anonymity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with grade_proxy("elite", "127.0.0.34") as gp, liar("fake_judge", "127.0.0.35") as canned:
        # the fake judge used as a *judge*: called directly it answers its canned page, without the token
        static = f"http://127.0.0.35:{canned.port}/get"
        result = await checker.check(_proxy(gp.url()), CheckContext(client, judges=[static]))
    assert result.skipped and not result.passed, result.detail
    assert checker.health.is_down(static)
    assert gp.seen == []  # the proxy was never asked to reach it


async def test_pipeline_kills_the_fake_judge_and_keeps_honest_grades(make_pool):
    """Through the whole pool (default checker settings, the admin's own judge): the fake judge is dead
    with the token detail; transparent/anonymous/elite proxies stay active with their grades."""
    async with (
        liar("fake_judge", "127.0.0.41") as fake,
        grade_proxy("transparent", "127.0.0.42") as transparent,
        grade_proxy("anonymous", "127.0.0.43") as anonymous,
        grade_proxy("elite", "127.0.0.44") as elite,
    ):
        pool = await make_pool(
            [fake.url(), transparent.url(), anonymous.url(), elite.url()], admin={"token": "t" * 32}
        )
        await pool.wait_until(lambda: sum(p.last_checked is not None for p in pool.selector.proxies()) == 4)
        await pool.pipeline.wait_idle()
        by_host = {p.host: p for p in pool.selector.proxies()}
        assert by_host["127.0.0.41"].status.value == "dead"
        assert {h: by_host[h].anonymity.value for h in ("127.0.0.42", "127.0.0.43", "127.0.0.44")} == {
            "127.0.0.42": "transparent",
            "127.0.0.43": "anonymous",
            "127.0.0.44": "elite",
        }
        assert all(by_host[h].status.value == "active" for h in ("127.0.0.42", "127.0.0.43", "127.0.0.44"))
        admin = f"http://127.0.0.1:{pool.admin_address[1]}"
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer " + "t" * 32}) as http:
            async with http.get(f"{admin}/api/proxies/{by_host['127.0.0.41'].id}/checks") as resp:
                checks = (await resp.json())["checks"]
        failed = [c for c in checks if not c["passed"]]
        assert failed and failed[0]["checker"] == "http_anonymity"
        assert "does not echo the check token" in failed[0]["detail"]
