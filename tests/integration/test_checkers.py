"""The built-in checkers against real loopback servers: grade proxies, pproxy SOCKS, judges, .mmdb."""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from config import Settings
from plugins import AnonymityLevel, CheckContext, Proxy, UpstreamURL
from plugins.builtin.checkers import (
    geoip_lookup,
    http_anonymity,
    site_reach,
    socks_handshake,
    tcp_connect,
    tls_handshake,
)
from tests.support.geoip import LOOPBACK_COUNTRIES, build_country_db
from tests.support.grade_proxies import black_hole, grade_proxy, microsocks, microsocks_available
from tests.support.judges import down_judge_url, running_judge
from tests.support.upstreams import closed_port, pproxy_upstreams, start_pproxy

TIMEOUT = 5.0  # generous for proxies that work; black holes use SHORT
SHORT = 0.5


def make_proxy(url: str, id_: int = 1) -> Proxy:
    return Proxy(id_, UpstreamURL.parse(url))


def settings(**checker: object) -> Settings:
    return Settings(checker={"timeout": TIMEOUT, **checker})


def ctx(client: aiohttp.ClientSession, *judges: str) -> CheckContext:
    return CheckContext(http_client=client, judges=list(judges))


# tcp_connect ----------------------------------------------------------------------------------


async def test_tcp_connect_passes_and_records_latency(client):
    """A listening proxy passes tcp_connect and leaves its connect latency in the context."""
    async with grade_proxy("elite") as gp:
        context = ctx(client)
        result = await tcp_connect.create_plugin(settings()).check(make_proxy(gp.url()), context)
    assert result.passed, result.detail
    assert context.tcp_latency_ms is not None and context.tcp_latency_ms >= 0


async def test_tcp_connect_refused_port_fails(client):
    """A closed port fails tcp_connect with 'connection refused'."""
    result = await tcp_connect.create_plugin(settings()).check(
        make_proxy(f"http://127.0.0.1:{closed_port()}"), ctx(client)
    )
    assert not result.passed and not result.skipped
    assert "refused" in result.detail


# socks_handshake ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks4", "socks5"])
async def test_socks_handshake_to_first_judge(client, judge, scheme):
    """A pproxy SOCKS upstream completes a real handshake to the first judge's host:port."""
    async with pproxy_upstreams(1, "socks4+socks5") as (up,):
        checker = socks_handshake.create_plugin(settings())
        proxy = make_proxy(up.url(scheme))
        assert not checker.should_skip(proxy)
        result = await checker.check(proxy, ctx(client, judge.json_url))
    assert result.passed, result.detail
    assert result.metadata["target"] == judge.base.removeprefix("http://")


async def test_socks_handshake_skips_http_proxies():
    """HTTP and HTTPS proxies are not SOCKS: the handshake check does not apply."""
    checker = socks_handshake.create_plugin(settings())
    assert checker.should_skip(make_proxy("http://127.0.0.2:3128"))
    assert checker.should_skip(make_proxy("https://127.0.0.2:3128"))


@pytest.mark.skipif(not microsocks_available(), reason="microsocks is not installed")
async def test_socks_handshake_to_unreachable_target_fails(client, judge):
    """A SOCKS5 server that reports a refused target fails the handshake; a reachable one passes."""
    target = f"127.0.0.1:{closed_port()}"
    async with microsocks() as ms:
        refused = await socks_handshake.create_plugin(settings(tcp_target=target)).check(
            make_proxy(ms.url()), ctx(client)
        )
        reached = await socks_handshake.create_plugin(settings()).check(
            make_proxy(ms.url()), ctx(client, judge.json_url)
        )
    assert not refused.passed and not refused.skipped
    assert target in refused.detail
    assert reached.passed, reached.detail


async def test_socks_handshake_with_a_non_socks_server_fails(client, judge):
    """An HTTP server listed as socks5 does not complete the handshake."""
    result = await socks_handshake.create_plugin(settings()).check(
        make_proxy(judge.base.replace("http", "socks5")), ctx(client, judge.json_url)
    )
    assert not result.passed and not result.skipped


async def test_socks_handshake_wrong_password_fails_without_leaking_it(client, judge):
    """Bad SOCKS5 credentials fail the handshake; the password never appears in the detail."""
    up = await start_pproxy("127.0.0.2", "socks5", auth="alice:right")
    try:
        checker = socks_handshake.create_plugin(settings())
        # wrong first: pproxy remembers an address that once authenticated
        bad = await checker.check(
            make_proxy(f"socks5://alice:wrong@127.0.0.2:{up.port}"), ctx(client, judge.json_url)
        )
        good = await checker.check(
            make_proxy(f"socks5://alice:right@127.0.0.2:{up.port}"), ctx(client, judge.json_url)
        )
    finally:
        await up.stop()
    assert good.passed, good.detail
    assert not bad.passed
    assert "wrong" not in bad.detail and "right" not in good.detail


async def test_socks_handshake_black_hole_fails(client, judge):
    """A SOCKS 'proxy' that accepts and never answers fails within checker.timeout."""
    async with black_hole("127.0.0.6") as hole:
        result = await socks_handshake.create_plugin(settings(timeout=SHORT)).check(
            make_proxy(hole.url("socks5")), ctx(client, judge.json_url)
        )
    assert not result.passed and not result.skipped
    assert "timed out" in result.detail


# http_anonymity: grades -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "azenv"])
@pytest.mark.parametrize(
    ("grade", "level", "sign"),
    [
        ("transparent", AnonymityLevel.TRANSPARENT, "X-Forwarded-For"),
        ("anonymous", AnonymityLevel.ANONYMOUS, "Via"),
        ("elite", AnonymityLevel.ELITE, None),
    ],
)
async def test_grade_proxies_are_graded(client, judge, fmt, grade, level, sign):
    """Each grade proxy gets its level from either judge format, with its exit address and signs."""
    url = judge.json_url if fmt == "json" else judge.azenv_url
    async with grade_proxy(grade, "127.0.0.3") as gp:
        context = ctx(client, url)
        result = await http_anonymity.create_plugin(settings()).check(make_proxy(gp.url()), context)
    assert result.passed, result.detail
    assert context.anonymity_level is level
    assert context.exit_ip == "127.0.0.3"
    assert context.real_ip == "127.0.0.1"
    assert context.http_latency_ms is not None
    assert result.metadata["anonymity"] == level.value
    assert result.metadata["judge"] == url
    if sign is None:
        assert context.headers_forwarded == []
    else:
        assert sign in context.headers_forwarded
    # asked both ways the gateway uses an HTTP proxy: the absolute form and inside a CONNECT tunnel
    assert judge.hits(url.split("?")[0].removeprefix(judge.base), "127.0.0.3") == 2
    assert [line.split(" ", 1)[0] for line in gp.seen] == ["GET", "CONNECT"]


async def test_plain_proxy_written_https_fails_saying_it_does_not_speak_tls(client, judge):
    """``https://`` means TLS to the proxy itself: a plain HTTP proxy written so is not graded, and says why."""
    async with grade_proxy("anonymous", "127.0.0.4") as gp:
        context = ctx(client, judge.json_url)
        result = await tls_handshake.create_plugin(settings(timeout=SHORT)).check(make_proxy(gp.url("https")), context)
    assert not result.passed  # this one waits for a request head that a ClientHello never completes
    assert "TLS handshake with the proxy timed out" in result.detail and "not speak TLS" in result.detail


@pytest.mark.parametrize("scheme", ["socks4", "socks5"])
@pytest.mark.parametrize("fmt", ["json", "azenv"])
async def test_socks_proxies_are_graded_elite(client, judge, scheme, fmt):
    """SOCKS4/5 upstreams relay bytes untouched: elite, exit address their own 127.0.0.x."""
    url = judge.json_url if fmt == "json" else judge.azenv_url
    async with pproxy_upstreams(2, "socks4+socks5") as (_, up):
        context = ctx(client, url)
        result = await http_anonymity.create_plugin(settings()).check(make_proxy(up.url(scheme)), context)
    assert result.passed, result.detail
    assert context.anonymity_level is AnonymityLevel.ELITE
    assert context.exit_ip == up.host == "127.0.0.3"


async def test_proxy_credentials_are_used_and_never_shown(client, judge):
    """An HTTP proxy demanding Basic auth passes with the URL's credentials; without them it fails (407)."""
    async with grade_proxy("elite", "127.0.0.2", auth=("bob", "s3cret")) as gp:
        checker = http_anonymity.create_plugin(settings())
        good = await checker.check(make_proxy(gp.url()), ctx(client, judge.json_url))
        bad = await checker.check(make_proxy(f"http://127.0.0.2:{gp.port}"), ctx(client, judge.json_url))
    assert good.passed, good.detail
    assert "s3cret" not in good.detail and "s3cret" not in str(good.metadata)
    assert not bad.passed and not bad.skipped
    assert "407" in bad.detail


async def test_preset_real_ip_is_honoured(client, judge):
    """When the context already knows the real address, an exit showing it is graded transparent."""
    async with grade_proxy("elite", "127.0.0.2") as gp:
        context = ctx(client, judge.json_url)
        context.real_ip = "127.0.0.2"
        await http_anonymity.create_plugin(settings()).check(make_proxy(gp.url()), context)
    assert context.real_ip == "127.0.0.2"
    assert context.anonymity_level is AnonymityLevel.TRANSPARENT


async def test_real_address_is_learned_once_for_many_checks(client, judge):
    """Twenty concurrent checks share one direct call to the judge."""
    import asyncio

    checker = http_anonymity.create_plugin(settings())
    async with grade_proxy("elite", "127.0.0.2") as gp:
        results = await asyncio.gather(
            *(checker.check(make_proxy(gp.url(), i), ctx(client, judge.json_url)) for i in range(20))
        )
    assert all(r.passed for r in results)
    assert judge.hits("/get", "127.0.0.1") == 1
    assert judge.hits("/get", "127.0.0.2") == 40  # each: the absolute form and a CONNECT tunnel


async def test_judges_are_taken_in_turn(client, judge):
    """Two judges, two checks: the first judge is taken in turn, the other asked to agree on the exit."""
    checker = http_anonymity.create_plugin(settings())
    async with grade_proxy("elite", "127.0.0.2") as gp:
        used = [
            (
                await checker.check(make_proxy(gp.url()), ctx(client, judge.json_url, judge.azenv_url))
            ).metadata["judge"]
            for _ in range(2)
        ]
    assert sorted(used) == sorted([judge.json_url, judge.azenv_url])
    # each check: the first judge both ways (absolute form, CONNECT tunnel), the second one once
    assert judge.hits("/get", "127.0.0.2") == 3 and judge.hits("/azenv", "127.0.0.2") == 3


# http_anonymity: failures and whose fault -----------------------------------------------------


async def test_black_hole_proxy_fails_within_timeout(client, judge):
    """A proxy that accepts and never answers fails (not skipped) on its own, within checker.timeout."""
    async with black_hole("127.0.0.5") as hole:
        result = await http_anonymity.create_plugin(settings(timeout=SHORT)).check(
            make_proxy(hole.url()), ctx(client, judge.json_url)
        )
    assert not result.passed and not result.skipped
    assert "timed out" in result.detail
    assert hole.accepted >= 1


async def test_refused_proxy_fails(client, judge):
    """A proxy address nothing listens on fails with a clear reason."""
    result = await http_anonymity.create_plugin(settings()).check(
        make_proxy(f"http://127.0.0.2:{closed_port('127.0.0.2')}"), ctx(client, judge.json_url)
    )
    assert not result.passed and not result.skipped
    assert "refused" in result.detail


async def test_proxy_answering_502_to_a_healthy_judge_fails(client, judge):
    """A proxy that answers 502 while the judge answers directly is the proxy's fault."""
    async with grade_proxy("broken", "127.0.0.2") as gp:
        result = await http_anonymity.create_plugin(settings()).check(
            make_proxy(gp.url()), ctx(client, judge.json_url)
        )
    assert not result.passed and not result.skipped
    assert "502" in result.detail


async def test_only_judge_down_is_skipped_not_failed(client):
    """With every judge down the check has no verdict: skipped, never failed."""
    async with grade_proxy("elite", "127.0.0.2") as gp:
        result = await http_anonymity.create_plugin(settings()).check(
            make_proxy(gp.url()), ctx(client, down_judge_url())
        )
    assert result.skipped and not result.passed
    assert result.detail == "no healthy judge"
    assert gp.seen == []  # the proxy was never asked to reach a judge known to be down


async def test_garbage_judge_is_skipped(client, judge):
    """A judge answering a page of neither format is unhealthy: no verdict on the proxy."""
    async with grade_proxy("elite", "127.0.0.2") as gp:
        result = await http_anonymity.create_plugin(settings()).check(
            make_proxy(gp.url()), ctx(client, judge.garbage_url)
        )
    assert result.skipped


async def test_down_judge_is_marked_and_the_next_one_used(client, judge):
    """A down judge is marked unhealthy and passed over: every check uses the healthy one."""
    down = down_judge_url()
    checker = http_anonymity.create_plugin(settings())
    async with grade_proxy("elite", "127.0.0.2") as gp:
        results = [
            await checker.check(make_proxy(gp.url()), ctx(client, down, judge.json_url)) for _ in range(3)
        ]
    assert all(r.passed for r in results), [r.detail for r in results]
    assert {r.metadata["judge"] for r in results} == {judge.json_url}
    assert checker.health.is_down(down)


async def test_judge_dying_between_checks_is_not_blamed_on_the_proxy(client):
    """When the judge stops after being verified, a re-verification puts the failure on the judge."""
    checker = http_anonymity.create_plugin(settings())
    checker.reprobe_after = 0.0  # always re-verify after a failure
    async with grade_proxy("elite", "127.0.0.2") as gp:
        async with running_judge() as j:
            first = await checker.check(make_proxy(gp.url()), ctx(client, j.json_url))
            url = j.json_url
        second = await checker.check(make_proxy(gp.url()), ctx(client, url))
    assert first.passed, first.detail
    assert second.skipped and not second.passed
    assert checker.health.is_down(url)


async def test_no_judges_at_all_is_skipped(client):
    """No judge in the context nor in the settings: nothing to judge with."""
    checker = http_anonymity.create_plugin(settings(judges=[]))
    result = await checker.check(make_proxy("http://127.0.0.2:1"), ctx(client))
    assert result.skipped


# geoip_lookup ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "country"), [("127.0.0.3", "DE"), ("127.0.0.4", "JP")])
async def test_exit_address_is_located(client, judge, tmp_path: Path, host, country):
    """The exit address found by http_anonymity is looked up in a GeoLite2-shaped .mmdb."""
    db = build_country_db(tmp_path / "country.mmdb", LOOPBACK_COUNTRIES)
    s = settings(geoip_db=str(db))
    geo = geoip_lookup.create_plugin(s)
    assert geo is not None
    async with grade_proxy("anonymous", host) as gp:
        context = ctx(client, judge.json_url)
        proxy = make_proxy(gp.url())
        assert (await http_anonymity.create_plugin(s).check(proxy, context)).passed
        result = await geo.check(proxy, context)
    assert result.passed
    assert context.country == country == result.metadata["country"]


# site_reach -----------------------------------------------------------------------------------


@pytest.fixture
async def origin(aiohttp_server):
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def forbidden(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/403", forbidden)
    app.router.add_get("/503", broken)
    return await aiohttp_server(app, host="127.0.0.1")


def _url(server, path: str) -> str:
    return str(server.make_url(path))


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_site_reach_passes_when_enough_answer(client, origin, scheme):
    """A 200 and a 403 both count as reached; a 503 and a closed port do not; min 2 of 4 passes."""
    targets = [
        _url(origin, "/ok"),
        _url(origin, "/403"),
        _url(origin, "/503"),
        f"http://127.0.0.1:{closed_port()}/",
    ]
    checker = site_reach.create_plugin(settings(site_reach_targets=targets, site_reach_min=2))
    async with pproxy_upstreams(1, "http+socks5") as (up,):
        result = await checker.check(make_proxy(up.url(scheme)), ctx(client))
    assert result.passed, result.detail
    assert result.metadata["reached"] == 2
    assert "503" in result.detail


async def test_site_reach_fails_when_too_few_answer(client, origin):
    """Only one of three targets answers but two are required: the check fails."""
    targets = [_url(origin, "/ok"), _url(origin, "/503"), f"http://127.0.0.1:{closed_port()}/"]
    checker = site_reach.create_plugin(settings(site_reach_targets=targets, site_reach_min=2))
    async with grade_proxy("elite", "127.0.0.2") as gp:
        result = await checker.check(make_proxy(gp.url()), ctx(client))
    assert not result.passed
    assert result.detail.startswith("1/3 targets reached (need 2)")


@pytest.mark.parametrize("kind", ["pproxy-http", "pproxy-socks4", "pproxy-socks5", "microsocks", "grade-http"])
async def test_site_reach_has_one_rule_for_a_dead_target(client, origin, kind):
    """One live and one dead target, min 1: every kind of proxy passes, and the dead target is "not
    reached" however the proxy reports it (closes, SOCKS "connection refused", HTTP 502); never an error."""
    if kind == "microsocks" and not microsocks_available():
        pytest.skip("microsocks is not installed")
    dead = f"http://127.0.0.1:{closed_port()}/"
    checker = site_reach.create_plugin(settings(site_reach_targets=[_url(origin, "/ok"), dead], site_reach_min=1))
    async with contextlib.AsyncExitStack() as stack:
        if kind.startswith("pproxy"):
            (up,) = await stack.enter_async_context(pproxy_upstreams(1, "http+socks4+socks5"))
            url = up.url(kind.split("-")[1])
        elif kind == "microsocks":
            url = (await stack.enter_async_context(microsocks())).url()
        else:
            url = (await stack.enter_async_context(grade_proxy("elite", "127.0.0.2"))).url()
        result = await checker.check(make_proxy(url), ctx(client))
    assert result.passed, result.detail
    assert result.metadata == {"reached": 1, "failed": [dead]}
    assert result.detail.startswith("1/2 targets reached (need 1)") and "raised" not in result.detail


async def test_site_reach_through_black_hole_fails(client, origin):
    """A proxy that never answers reaches nothing."""
    checker = site_reach.create_plugin(settings(site_reach_targets=[_url(origin, "/ok")], timeout=SHORT))
    async with black_hole("127.0.0.5") as hole:
        result = await checker.check(make_proxy(hole.url()), ctx(client))
    assert not result.passed
    assert "timed out" in result.detail


async def test_site_reach_https_target_through_credentialed_connect(tmp_path):
    """An https target goes through a CONNECT tunnel that carries the proxy's credentials."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="tls ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    target = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
            checker = site_reach.create_plugin(settings(site_reach_targets=[target]))
            async with grade_proxy("elite", "127.0.0.2", auth=("carol", "pw1")) as gp:
                good = await checker.check(make_proxy(gp.url()), ctx(session))
                bad = await checker.check(make_proxy(f"http://127.0.0.2:{gp.port}"), ctx(session))
    finally:
        await runner.cleanup()
    assert good.passed, good.detail
    assert gp.seen[0].startswith("CONNECT 127.0.0.1:")
    assert not bad.passed and "407" in bad.detail
    assert "pw1" not in good.detail + bad.detail


async def test_judge_gone_behind_a_black_hole_is_the_judges_fault(client):
    """The judge stops after being verified and the proxy never answers: the judge, asked again
    directly with a share of the budget the proxy cannot eat, refuses: no verdict on the proxy
    (the proxy's timeout used to leave no time to ask, and the proxy was blamed: issue 22 #18)."""
    checker = http_anonymity.create_plugin(settings(timeout=SHORT))
    checker.reprobe_after = 0.0  # always re-verify after a failure
    async with grade_proxy("elite", "127.0.0.2") as gp, running_judge() as j:
        first = await checker.check(make_proxy(gp.url()), ctx(client, j.json_url))
        url = j.json_url
    async with black_hole("127.0.0.5") as hole:
        second = await checker.check(make_proxy(hole.url()), ctx(client, url))
    assert first.passed, first.detail
    assert second.skipped and not second.passed, second.detail
    assert checker.health.is_down(url)
