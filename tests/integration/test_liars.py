"""Lying proxies (tests/support/liars.py) beside honest ones, with default checker settings on loopback:
every liar ends dead with the detail that names its lie, every honest proxy keeps its grade."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer

from bench.upstreams import Services, have
from config import Settings
from plugins import CheckContext, Proxy, UpstreamURL
from plugins.builtin.checkers import http_anonymity, tls_tunnel
from pool.tls_judge import TlsJudge
from tests.support.grade_proxies import grade_proxy, microsocks, microsocks_available
from tests.support.liars import liar
from tests.support.upstreams import closed_port, origin_app, start_pproxy

TOKEN = "t" * 32
ROOT = str(Path(__file__).resolve().parents[2])

pytestmark = pytest.mark.timeout(60)


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


# tls_tunnel -----------------------------------------------------------------------------------


@pytest.fixture
async def tls_judge() -> AsyncIterator[TlsJudge]:
    judge = await TlsJudge.start("127.0.0.1")
    yield judge
    await judge.stop()


async def _tls_check(client, judge: TlsJudge, url: str) -> tuple[object, CheckContext]:
    context = CheckContext(client, tls_endpoints=[judge.endpoint])
    result = await tls_tunnel.create_plugin(Settings(checker={"timeout": 5.0})).check(_proxy(url), context)
    return result, context


async def test_man_in_the_middle_is_caught_by_the_pinned_certificate(client, tls_judge):
    """A proxy that answers CONNECT itself with a certificate of its own fails: a man in the middle."""
    async with liar("man_in_the_middle", "127.0.0.36") as mitm:
        result, context = await _tls_check(client, tls_judge, mitm.url())
    assert mitm.lies == 1
    assert not result.passed and not result.skipped
    assert result.detail.startswith("man in the middle: CONNECT to the checker's TLS judge")
    assert context.tunnels is None


async def test_connect_refuser_is_plain_http_only_not_dead(client, tls_judge):
    """A refused CONNECT is a capability: the check passes and says the proxy does not tunnel."""
    async with liar("connect_refuser", "127.0.0.37") as refuser:
        result, context = await _tls_check(client, tls_judge, refuser.url())
    assert result.passed, result.detail
    assert context.tunnels is False
    assert result.detail == (
        f"plain HTTP only: CONNECT to the checker's TLS judge 127.0.0.1:{tls_judge.port} refused: 405 Method Not Allowed"
    )


@pytest.mark.parametrize("scheme", ["http", "socks4", "socks5"])
async def test_honest_proxies_tunnel_to_the_tls_judge(client, tls_judge, scheme):
    """pproxy over HTTP CONNECT, SOCKS4 and SOCKS5 reaches the judge's own certificate: tunnels."""
    up = await start_pproxy("127.0.0.38", "http+socks4+socks5")
    try:
        result, context = await _tls_check(client, tls_judge, up.url(scheme))
    finally:
        await up.stop()
    assert result.passed, result.detail
    assert context.tunnels is True
    assert result.detail.startswith("tunnels: TLS to the checker's TLS judge")


async def test_credentialed_http_proxy_tunnels(client, tls_judge):
    async with grade_proxy("elite", "127.0.0.39", auth=("ann", "pw")) as gp:
        result, context = await _tls_check(client, tls_judge, gp.url())
    assert result.passed and context.tunnels is True, result.detail
    assert "pw" not in result.detail


async def test_no_reachable_tls_endpoint_is_not_checked(client):
    """No own TLS judge and a judge whose HTTPS form answers nothing: no verdict on tunnelling, no death."""
    checker = tls_tunnel.create_plugin(Settings(checker={"timeout": 2.0}))
    async with liar("man_in_the_middle", "127.0.0.40") as mitm:
        context = CheckContext(client, judges=[f"https://127.0.0.1:{closed_port()}/get"])
        result = await checker.check(_proxy(mitm.url()), context)
    assert result.passed and context.tunnels is None
    assert result.detail.startswith("not checked")
    assert mitm.connects == 0


# the whole pool ---------------------------------------------------------------------------------


async def _checks(admin: str, proxy_id: int) -> list[dict]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.get(f"{admin}/api/proxies/{proxy_id}/checks") as resp:
            assert resp.status == 200
            return (await resp.json())["checks"]


async def test_default_pipeline_kills_liars_keeps_honest_software(make_pool, tmp_path):
    """Default checker settings (the admin's judges): the fake judge, the man in the middle and the HTML
    injector are dead with their detail, the CONNECT refuser is active for plain HTTP only, and honest
    software (pproxy, tinyproxy, squid, microsocks, a grade proxy) stays active and tunnelling."""
    async with contextlib.AsyncExitStack() as stack:
        services = stack.enter_context(Services(tmp_path / "services"))
        urls = [services.tinyproxy("127.0.0.61").url] if have("tinyproxy") else []
        urls += [services.squid("127.0.0.62").url] if have("squid") else []
        if microsocks_available():
            urls.append((await stack.enter_async_context(microsocks("127.0.0.64"))).url())
        pproxy = await start_pproxy("127.0.0.63", "http+socks5")
        stack.push_async_callback(pproxy.stop)
        urls += [pproxy.url("http"), pproxy.url("socks5")]
        urls.append((await stack.enter_async_context(grade_proxy("anonymous", "127.0.0.54"))).url())
        liars = {}
        for kind, host in (
            ("fake_judge", "127.0.0.51"),
            ("man_in_the_middle", "127.0.0.52"),
            ("connect_refuser", "127.0.0.53"),
            ("html_injector", "127.0.0.55"),
        ):
            liars[kind] = await stack.enter_async_context(liar(kind, host))
        urls += [one.url() for one in liars.values()]
        pool = await make_pool(urls, admin={"token": TOKEN})
        await pool.wait_until(lambda: sum(p.last_checked is not None for p in pool.selector.proxies()) == len(urls))
        await pool.pipeline.wait_idle()
        await pool.pipeline.flush()
        by = {(p.host, p.protocol.value): p for p in pool.selector.proxies()}
        admin = f"http://127.0.0.1:{pool.admin_address[1]}"

        for kind, checker, detail in (
            ("fake_judge", "http_anonymity", "the answer does not echo the check token"),
            ("man_in_the_middle", "tls_tunnel", "man in the middle: CONNECT to the checker's TLS judge"),
            ("html_injector", "content_integrity", "alters content: "),
        ):
            proxy = by[(liars[kind].host, "http")]
            assert proxy.status.value == "dead", kind
            failed = next(c for c in await _checks(admin, proxy.id) if not c["passed"])
            assert failed["checker"] == checker and detail in failed["detail"], (kind, failed)
        refuser = by[("127.0.0.53", "http")]
        assert refuser.status.value == "active" and refuser.tunnels is False

        liar_hosts = {one.host for one in liars.values()}
        honest = [p for key, p in by.items() if key[0] not in liar_hosts]
        assert len(honest) == len(urls) - 4
        assert all(p.status.value == "active" and p.tunnels is True for p in honest), [
            (p.display_url, p.status, p.tunnels) for p in honest
        ]
        assert by[("127.0.0.54", "http")].anonymity.value == "anonymous"
        assert by[("127.0.0.63", "socks5")].anonymity.value == "elite"

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with http.get(f"{admin}/api/proxies?status=active&limit=100") as resp:
                listed = {p["host"] + "/" + p["protocol"]: p["tunnels"] for p in (await resp.json())["proxies"]}
            async with http.get(f"{admin}/metrics") as resp:
                metrics = await resp.text()
        assert listed["127.0.0.53/http"] is False and listed["127.0.0.54/http"] is True
        assert 'proxy_pool_active_proxies_by_tunnels{tunnels="no"} 1.0' in metrics
        assert f'proxy_pool_active_proxies_by_tunnels{{tunnels="yes"}} {len(honest)}.0' in metrics

        # the CLI reads the same flag from the database
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "proxies", "--status", "active", "--db", pool.settings.storage.path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT},
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 0, stderr.decode()
        header, *rows = stdout.decode().splitlines()
        assert "TUNNELS" in header.split()
        assert "False" in next(r for r in rows if "127.0.0.53" in r).split()
        assert "True" in next(r for r in rows if "127.0.0.54" in r).split()


# the gateway trusts the flags -------------------------------------------------------------------


@pytest.fixture
async def tls_origin() -> AsyncIterator[tuple[TestServer, ssl.SSLContext]]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server = TestServer(origin_app(), host="127.0.0.1")
    await server.start_server(ssl=server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    yield server, client_ctx
    await server.close()


async def _https_through(gateway: str, url: str, ctx: ssl.SSLContext, n: int) -> list[str]:
    """``n`` HTTPS requests, each its own CONNECT through the gateway; the peers the origin saw."""
    peers = []
    connector = aiohttp.TCPConnector(force_close=True, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as http:
        for i in range(n):
            async with http.get(f"{url}/echo?i={i}", proxy=gateway) as resp:
                assert resp.status == 200, await resp.text()
                peers.append((await resp.json())["peer"])
    return peers


async def test_https_never_goes_to_the_connect_refuser(make_pool, tls_origin, origin):
    """100 HTTPS requests through a gateway whose pool holds the refuser all succeed (none reach it);
    plain HTTP still uses it."""
    tls, ctx = tls_origin
    async with liar("connect_refuser", "127.0.0.71") as refuser, grade_proxy("elite", "127.0.0.72") as honest:
        pool = await make_pool([refuser.url(), honest.url()], gateway={"allowed_connect_ports": "*"})
        await pool.wait_until(lambda: pool.selector.active_count == 2)
        gateway = f"http://127.0.0.1:{pool.gateway_address[1]}"
        before = refuser.connects
        peers = await _https_through(gateway, f"https://127.0.0.1:{tls.port}", ctx, 100)
        assert set(peers) == {"127.0.0.72"}
        assert refuser.connects == before  # never asked for a tunnel by the gateway
        async with aiohttp.ClientSession() as http:
            plain = set()
            for i in range(6):
                async with http.get(f"http://127.0.0.1:{origin.port}/echo?p={i}", proxy=gateway) as resp:
                    plain.add((await resp.json())["peer"])
        assert plain == {"127.0.0.71", "127.0.0.72"}


async def test_a_refused_connect_is_failed_over_and_marks_the_upstream(make_pool, tls_origin):
    """Before a check knows it, an upstream refusing CONNECT (405) is failed over like a 5xx (the client
    never sees it), is not benched, and gets no tunnel again until its next check."""
    tls, ctx = tls_origin
    async with liar("connect_refuser", "127.0.0.73") as refuser, grade_proxy("elite", "127.0.0.74") as honest:
        pool = await make_pool([refuser.url(), honest.url()], gateway={"allowed_connect_ports": "*"})
        await pool.wait_until(lambda: pool.selector.active_count == 2)
        flagged = next(p for p in pool.selector.proxies() if p.host == "127.0.0.73")
        assert flagged.tunnels is False
        flagged.tunnels = None  # as if no check had told (e.g. no TLS endpoint reachable)
        gateway = f"http://127.0.0.1:{pool.gateway_address[1]}"
        before = refuser.connects
        peers = await _https_through(gateway, f"https://127.0.0.1:{tls.port}", ctx, 10)
        assert set(peers) == {"127.0.0.74"}
        assert refuser.connects == before + 1  # asked once, failed over, then never again
        assert flagged.tunnels is False
        assert flagged.id not in pool.selector.benched and pool.selector.active_count == 2
        await _https_through(gateway, f"https://127.0.0.1:{tls.port}", ctx, 10)
        assert refuser.connects == before + 1


async def test_https_proxy_tunnels_tls_in_tls(client, tls_judge, tmp_path):
    """An https:// upstream (TLS to the proxy itself) carries the CONNECT inside its own TLS."""
    from tests.support.upstreams import start_tls_pproxy

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    up = await start_tls_pproxy(ca, "127.0.0.75")
    try:
        checker = tls_tunnel.create_plugin(Settings(checker={"timeout": 5.0, "upstream_tls_verify": str(ca_file)}))
        context = CheckContext(client, tls_endpoints=[tls_judge.endpoint])
        result = await checker.check(_proxy(up.url("https")), context)
    finally:
        await up.stop()
    assert result.passed and context.tunnels is True, result.detail


# content_integrity --------------------------------------------------------------------------------


async def test_html_injector_alters_content(make_pool):
    """A proxy appending a script to text/html is dead with "alters content"; an honest one beside it
    passes with the page intact, and the judge page served by the admin is the known one."""
    from plugins import JUDGE_PAGE

    async with liar("html_injector", "127.0.0.81") as injector, grade_proxy("elite", "127.0.0.82") as honest:
        pool = await make_pool([injector.url(), honest.url()], admin={"token": TOKEN})
        await pool.wait_until(lambda: sum(p.last_checked is not None for p in pool.selector.proxies()) == 2)
        await pool.pipeline.wait_idle()
        await pool.pipeline.flush()
        by = {p.host: p for p in pool.selector.proxies()}
        admin = f"http://127.0.0.1:{pool.admin_address[1]}"
        assert by["127.0.0.81"].status.value == "dead" and injector.lies >= 1
        failed = next(c for c in await _checks(admin, by["127.0.0.81"].id) if not c["passed"])
        assert failed["checker"] == "content_integrity"
        assert failed["detail"].startswith(f"alters content: {admin}/judge/page came back with")
        assert by["127.0.0.82"].status.value == "active"
        intact = next(c for c in await _checks(admin, by["127.0.0.82"].id) if c["checker"] == "content_integrity")
        assert intact["passed"] and intact["detail"] == f"content intact: {admin}/judge/page ({len(JUDGE_PAGE)} bytes)"
        async with aiohttp.ClientSession() as http, http.get(f"{admin}/judge/page") as resp:
            assert resp.headers["Content-Type"].startswith("text/html")
            assert await resp.read() == JUDGE_PAGE


async def test_static_integrity_page_learned_directly(client, origin):
    """A configured static page: its content is learned by a direct fetch, then compared through the proxy."""
    from plugins.builtin.checkers import content_integrity

    static = f"http://127.0.0.1:{origin.port}/big?size=5000"
    checker = content_integrity.create_plugin(Settings(checker={"timeout": 5.0, "integrity_pages": [static]}))
    async with grade_proxy("elite", "127.0.0.83") as honest, liar("html_injector", "127.0.0.84") as injector:
        good = await checker.check(_proxy(honest.url()), CheckContext(client))
        # the injector leaves non-HTML alone: it only lies to pages
        also_good = await checker.check(_proxy(injector.url()), CheckContext(client))
    assert good.passed and good.detail == f"content intact: {static} (5000 bytes)"
    assert also_good.passed, also_good.detail


async def test_no_page_reachable_is_not_checked(client):
    from plugins.builtin.checkers import content_integrity

    checker = content_integrity.create_plugin(
        Settings(checker={"timeout": 2.0, "integrity_pages": [f"http://127.0.0.1:{closed_port()}/html"]})
    )
    async with liar("html_injector", "127.0.0.85") as injector:
        result = await checker.check(_proxy(injector.url()), CheckContext(client))
    assert result.passed and result.detail.startswith("not checked")
    assert injector.lies == 0


async def test_a_page_refused_through_the_proxy_is_not_an_alteration(client):
    """A 503 through the proxy (a site rate-limiting that exit) says nothing about the proxy's honesty."""
    from aiohttp import web

    from plugins.builtin.checkers import content_integrity

    async def page(request: web.Request) -> web.Response:
        if request.remote == "127.0.0.86":  # the proxy's exit is rate-limited
            return web.Response(status=503, text="slow down")
        return web.Response(text="<html><body>static</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/html", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = f"http://127.0.0.1:{server.port}/html"
        checker = content_integrity.create_plugin(Settings(checker={"timeout": 5.0, "integrity_pages": [url]}))
        async with grade_proxy("elite", "127.0.0.86") as limited:
            result = await checker.check(_proxy(limited.url()), CheckContext(client))
    finally:
        await server.close()
    assert result.passed, result.detail
    assert result.detail == f"not checked: {url} answered 503 through the proxy"


# issue 22: liars honest only where the checker looks ----------------------------------------------


@pytest.fixture
async def own_judge_page() -> AsyncIterator[str]:
    """The project's own judge page (``plugins.JUDGE_PAGE`` at ``/judge/page``); yields the judge URL."""
    from aiohttp import web

    from plugins import JUDGE_PAGE

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=JUDGE_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/judge/page", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/judge"
    await server.close()


async def test_tunnel_rewriter_is_graded_by_what_it_does_inside_tunnels(client, judge):
    """Honest in the absolute form, rewriting plain HTTP inside its CONNECT tunnels (which the gateway
    uses for http:// targets): graded by the worse way, transparent, not elite."""
    checker = http_anonymity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with liar("tunnel_rewriter", "127.0.0.91") as rewriter:
        result = await checker.check(_proxy(rewriter.url()), CheckContext(client, judges=[judge.json_url]))
    assert rewriter.connects >= 1
    assert result.passed, result.detail
    assert result.metadata["anonymity"] == "transparent" and result.metadata["exit_ip"] == "127.0.0.91"
    assert {"Via", "X-Forwarded-For"} <= set(result.metadata["headers_forwarded"])


async def test_tunnel_rewriter_alters_content_inside_tunnels(client, own_judge_page):
    """The page comes back intact in the absolute form and with a script inside a CONNECT tunnel: dead."""
    from plugins.builtin.checkers import content_integrity

    checker = content_integrity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with liar("tunnel_rewriter", "127.0.0.92") as rewriter, grade_proxy("elite", "127.0.0.93") as honest:
        lied = await checker.check(_proxy(rewriter.url()), CheckContext(client, judges=[own_judge_page]))
        intact = await checker.check(_proxy(honest.url()), CheckContext(client, judges=[own_judge_page]))
    assert not lied.passed and lied.detail.startswith("alters content inside a CONNECT tunnel: "), lied.detail
    assert intact.passed and intact.detail.startswith("content intact: "), intact.detail
    assert honest.seen[0].startswith("GET http://") and honest.seen[1].startswith("CONNECT ")  # both ways


async def test_a_proxy_refusing_the_judge_page_fails(client, own_judge_page):
    """An injector that answers 403 only to the project's own judge page has not shown it is honest."""
    from plugins.builtin.checkers import content_integrity

    checker = content_integrity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with liar("page_refuser", "127.0.0.94") as refuser:
        result = await checker.check(_proxy(refuser.url()), CheckContext(client, judges=[own_judge_page]))
    assert refuser.lies >= 1
    assert not result.passed and not result.skipped
    assert result.detail == f"refuses the judge page: {own_judge_page}/page answered 403 through the proxy"


async def test_transparent_proxy_behind_a_self_hosted_httpbin_keeps_its_exit(client, judge):
    """A self-hosted httpbin reports the X-Forwarded-For a transparent proxy adds (our own address) as
    its origin: that is the transparent sign, not a second exit; the two judges agree."""
    checker = http_anonymity.create_plugin(Settings(checker={"timeout": 5.0}))
    async with grade_proxy("transparent", "127.0.0.95") as gp:
        results = [
            await checker.check(_proxy(gp.url()), CheckContext(client, judges=[judge.json_url, judge.forwarded_url]))
            for _ in range(2)  # judges are taken in turn: each one first once
        ]
    for result in results:
        assert result.passed, result.detail
        assert result.metadata["anonymity"] == "transparent" and result.metadata["exit_ip"] == "127.0.0.95"
