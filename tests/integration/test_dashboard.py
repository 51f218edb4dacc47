"""The dashboard: its login and cookie rules over plain HTTP, and the page in headless Chromium (Playwright with
Debian's chromium, never a downloaded browser) on a real gateway with real upstreams.

The browser logs in with the token, sees the pool, adds a user (password shown once), credits, disables (the
gateway then answers 407) and enables them, re-checks a proxy and takes a screenshot.  Without a genuine session cookie: the login form, no data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import pytest

from gateway.admin.history import EVENTS, HISTORY
from gateway.admin.sessions import COOKIE, Sessions
from gateway.app import ProxyPool
from pool.models import ProxyStatus
from tests.integration.test_users_credits import admin_url, basic, raw_get
from tests.support.upstreams import closed_port
from tests.support.waiting import eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.timeout(60)
TOKEN = "dashboard-test-token-0123456789abcdef"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


async def dashboard_pool(make_pool, upstreams, *, dead: int = 0) -> ProxyPool:
    """Two working upstreams (HTTP, SOCKS5) and ``dead`` that refuse connections."""
    refusing = [f"http://127.0.0.1:{closed_port()}" for _ in range(dead)]
    pool = await make_pool(
        [upstreams[0].url("http"), upstreams[1].url("socks5"), *refusing],
        gateway={"auth": "users", "allowed_connect_ports": "*"},
        admin={"token": TOKEN},
    )
    await pool.wait_until(
        lambda: pool.selector.active_count == 2 and sum(p.status is ProxyStatus.DEAD for p in pool.selector.proxies()) == dead
    )
    return pool


def plain_client() -> aiohttp.ClientSession:
    """A client that sends exactly the cookies a test gives it (no jar)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


async def login(client: aiohttp.ClientSession, pool: ProxyPool, **kwargs) -> str:
    async with client.post(admin_url(pool, "/login"), json={"token": TOKEN}, **kwargs) as resp:
        assert resp.status == 204, await resp.text()
        morsel = resp.cookies[COOKIE]
        assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
        assert int(morsel["max-age"]) > 0
        assert TOKEN not in resp.headers["Set-Cookie"]
        return morsel.value


async def page_of(client: aiohttp.ClientSession, pool: ProxyPool, cookie: str | None, **headers: str) -> str:
    sent = {**headers, **({"Cookie": f"{COOKIE}={cookie}"} if cookie is not None else {})}
    async with client.get(admin_url(pool, "/"), headers=sent) as resp:
        assert resp.status == 200
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
        return await resp.text()


async def api_status(client: aiohttp.ClientSession, pool: ProxyPool, cookie: str, **headers: str) -> int:
    async with client.get(admin_url(pool, "/api/stats"), headers={"Cookie": f"{COOKIE}={cookie}", **headers}) as resp:
        return resp.status


def is_login_form(page: str) -> bool:
    return 'id="login-form"' in page and 'id="dashboard"' not in page and "/api/" not in page


async def test_without_a_genuine_session_only_the_login_form(make_pool, upstreams):
    """No cookie, a forged one, one signed with another token (the token changed), an expired one: the
    login form without a figure, and 401 from the API. The form posts: without its script the token would
    go as a form body (415), never into a URL."""
    pool = await dashboard_pool(make_pool, upstreams)
    other_token = Sessions().issue("another-admin-token")
    expired = Sessions(seconds=-1).issue(TOKEN)
    async with plain_client() as client:
        for cookie in (None, "forged", "v1.abc.99999999999.forged", other_token, expired):
            page = await page_of(client, pool, cookie)
            assert is_login_form(page), cookie
            assert 'method="post" action="/login"' in page
            assert pool.replica not in page  # not even the replica's name
            if cookie is not None:
                assert await api_status(client, pool, cookie) == 401
        async with client.get(admin_url(pool, "/dashboard.js")) as resp:  # the script carries no data
            assert resp.status == 200 and resp.content_type == "application/javascript"


async def test_login_rules(make_pool, upstreams):
    """Wrong token 401 (no cookie), no token 400, a form body 415, a foreign Origin 403, a foreign Host 421;
    a right token a new session each time (a cookie sent along is never kept: no fixation)."""
    pool = await dashboard_pool(make_pool, upstreams)
    url = admin_url(pool, "/login")
    async with plain_client() as client:
        async with client.post(url, json={"token": "wrong"}) as resp:
            assert resp.status == 401 and "Set-Cookie" not in resp.headers
            assert await resp.json() == {"error": "wrong admin token"}
        async with client.post(url, json={"token": TOKEN[:-1]}) as resp:
            assert resp.status == 401
        async with client.post(url, json={}) as resp:
            assert resp.status == 400
        async with client.post(url, data={"token": TOKEN}) as resp:  # what a plain HTML form sends
            assert resp.status == 415 and "Set-Cookie" not in resp.headers
        async with client.post(url, json={"token": TOKEN}, headers={"Origin": "http://evil.example"}) as resp:
            assert resp.status == 403 and "Set-Cookie" not in resp.headers
        async with client.post(url, json={"token": TOKEN}, headers={"Origin": "http://127.0.0.1:1"}) as resp:
            assert resp.status == 403  # another port of the same site is another origin
        async with client.post(url, json={"token": TOKEN}, headers={"Host": "rebound.example"}) as resp:
            assert resp.status == 421 and "Set-Cookie" not in resp.headers
        async with client.get(admin_url(pool, "/"), headers={"Host": "rebound.example"}) as resp:
            assert resp.status == 421

        first = await login(client, pool)
        second = await login(client, pool, headers={"Cookie": f"{COOKIE}={first}"})
        assert first != second
        fixed = "v1.attacker-chosen.99999999999.x"
        third = await login(client, pool, headers={"Cookie": f"{COOKIE}={fixed}"})
        assert fixed not in (third,) and third.split(".")[1] != "attacker-chosen"
        for cookie in (first, second, third):
            assert await api_status(client, pool, cookie) == 200


async def test_the_cookie_only_from_the_admins_own_origin(make_pool, upstreams):
    """Cookies are per host, not per port: a page on another port of 127.0.0.1 is same-site, so its
    requests carry the cookie. The cookie stands for the token only on the admin's own origin, and the
    API's CSRF rules hold for cookie requests too (403 foreign Origin, 415 not JSON)."""
    pool = await dashboard_pool(make_pool, upstreams)
    host, port = pool.admin_address  # type: ignore[misc]
    async with plain_client() as client:
        cookie = await login(client, pool)
        assert await api_status(client, pool, cookie) == 200
        assert await api_status(client, pool, cookie, **{"Sec-Fetch-Site": "same-origin"}) == 200
        assert await api_status(client, pool, cookie, Origin=f"http://{host}:{port}") == 200
        assert await api_status(client, pool, cookie, **{"Sec-Fetch-Site": "same-site"}) == 401
        assert await api_status(client, pool, cookie, **{"Sec-Fetch-Site": "cross-site"}) == 401
        assert await api_status(client, pool, cookie, Origin=f"http://{host}:1") == 401
        assert is_login_form(await page_of(client, pool, cookie, **{"Sec-Fetch-Site": "same-site"}))
        assert not is_login_form(await page_of(client, pool, cookie, **{"Sec-Fetch-Site": "none"}))

        jar = {"Cookie": f"{COOKIE}={cookie}"}
        users = admin_url(pool, "/api/users")
        async with client.post(users, json={"name": "mallory"}, headers={**jar, "Origin": "http://127.0.0.1:1"}) as resp:
            assert resp.status == 403
        async with client.post(users, data="name=mallory", headers={**jar, "Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
        assert pool.accounts.users() == []
        async with client.post(users, json={"name": "alice"}, headers=jar) as resp:
            assert resp.status == 201


async def test_logout_ends_the_session_on_the_server(make_pool, upstreams):
    """After logout the same cookie value (replayed, as a thief would) opens nothing; other sessions live on."""
    pool = await dashboard_pool(make_pool, upstreams)
    async with plain_client() as client:
        cookie, other = await login(client, pool), await login(client, pool)
        async with client.post(admin_url(pool, "/logout"), headers={"Cookie": f"{COOKIE}={cookie}"}) as resp:
            assert resp.status == 204
            assert resp.cookies[COOKIE].value == "" and resp.cookies[COOKIE]["max-age"] == "0"
        assert await api_status(client, pool, cookie) == 401
        assert is_login_form(await page_of(client, pool, cookie))
        assert await api_status(client, pool, other) == 200
        async with client.post(admin_url(pool, "/logout"), headers={"Origin": "http://evil.example", "Cookie": f"{COOKIE}={other}"}) as resp:
            assert resp.status == 403  # a foreign page cannot log the operator out either
        assert await api_status(client, pool, other) == 200


async def test_history_and_events_need_the_operator(make_pool, upstreams):
    """The dashboard's own routes are API routes: token or session; their answers carry no secret."""
    pool = await dashboard_pool(make_pool, upstreams)
    await pool.accounts.add_user("alice", 0)
    pool.registry.emit_event("source.failed", source_id=1, source="http://u:hunter2@lists.example/p?key=s3cret", error="x")
    async with plain_client() as client:
        for path in ("/api/history", "/api/events"):
            async with client.get(admin_url(pool, path)) as resp:
                assert resp.status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        pool.admin_runner.app[HISTORY].sample()  # the sampler's next tick, now
        async with client.get(admin_url(pool, "/api/history"), headers=bearer) as resp:
            history = await resp.json()
        assert history["interval"] > 0 and history["points"], history
        point = history["points"][-1]
        assert point["total"] == 2 and point["active"] == 2 and point["dead"] == 0
        assert history["active_by"]["protocol"] == {"http": 1, "socks5": 1}
        assert {c["checker"] for c in history["checkers"]} == {c.name for c in pool.registry.checkers}
        async with client.get(admin_url(pool, f"/api/history?since={point['t']}"), headers=bearer) as resp:
            assert (await resp.json())["points"] == []  # nothing newer yet
        async with client.get(admin_url(pool, f"/api/history?since={point['t'] - 0.001}"), headers=bearer) as resp:
            assert (await resp.json())["points"] == [point]
        for bad in ("yesterday", "nan"):
            async with client.get(admin_url(pool, f"/api/history?since={bad}"), headers=bearer) as resp:
                assert resp.status == 400 and "since" in (await resp.json())["error"]
        await eventually(lambda: any(e["type"] == "source.failed" for e in pool.admin_runner.app[EVENTS].latest()))
        async with client.get(admin_url(pool, "/api/events"), headers=bearer) as resp:
            text = await resp.text()
        assert "hunter2" not in text and "s3cret" not in text and "lists.example" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
async def test_dashboard_in_a_real_browser(make_pool, upstreams, origin, tmp_path: Path):
    playwright_api = pytest.importorskip("playwright.async_api")
    pool = await dashboard_pool(make_pool, upstreams, dead=1)
    expect = playwright_api.expect
    expect.set_options(timeout=15_000)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            page.set_default_timeout(15_000)
            await page.goto(admin_url(pool, "/"))
            await expect(page.locator("#login-form")).to_be_visible()
            assert await page.locator("#dashboard").count() == 0

            await page.fill("#login-token", "not-the-token")
            await page.click("#login-form button")
            await expect(page.locator("#login-error")).to_have_text("wrong admin token")
            await page.fill("#login-token", TOKEN)
            await page.click("#login-form button")
            await page.wait_for_selector("body[data-ready='1']")
            assert TOKEN not in page.url and "?" not in page.url
            (cookie,) = await context.cookies()
            assert cookie["name"] == COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert TOKEN not in cookie["value"]
            assert await page.evaluate("document.cookie") == ""  # HttpOnly: the page's scripts cannot read it

            # the pool, the replica, the charts
            await expect(page.locator("#pool-active")).to_have_text("2")
            await expect(page.locator("#replica")).to_have_text(pool.replica)
            await expect(page.locator("#proxies tbody tr")).to_have_count(3)
            await expect(page.locator("#by-status tr[data-key=dead] td[data-col=n]")).to_have_text("1")
            await expect(page.locator("#chart-pool svg path.s-active")).to_have_count(1)
            await expect(page.locator("#chart-countries svg rect.bar")).to_have_count(1)  # loopback: "unknown"
            await expect(page.locator("#by-protocol td[data-col=key]")).to_have_count(2)
            source = page.locator("#sources tbody tr").first  # the source with its health and quality
            await expect(source.locator("td[data-col=health]")).to_have_text("ok")
            await expect(source.locator("td[data-col=active]")).to_have_text("2")
            await expect(source.locator("td[data-col=median_latency_ms]")).not_to_be_empty()

            # a user: added (the password shown once), credited; the gateway knows them at once
            await page.fill("#add-user-form input[name=name]", "alice")
            await page.fill("#add-user-form input[name=credits]", "5")
            await page.click("#add-user-form button")
            shown = page.locator("#new-password")
            await expect(shown).to_contain_text("alice")
            password = (await shown.text_content() or "").rsplit(": ", 1)[1]
            assert (await raw_get(pool, origin.port, basic("alice", password))).status == 200
            row = page.locator("#users tr[data-key='alice']")
            await expect(row.locator("td[data-col=credits]")).to_have_text("4")
            await expect(row.locator("td[data-col=requests]")).to_have_text("1")  # usage
            await expect(row.locator("td[data-col=enabled]")).to_have_text("enabled")
            await row.locator("input.amount").fill("10")
            await row.locator("button.credit").click()
            await expect(row.locator("td[data-col=credits]")).to_have_text("14")
            assert pool.accounts.balance("alice") == 14

            # disabled from the page: the gateway answers 407 at once; enabled again: 200
            await row.locator("button.disable").click()
            await expect(row.locator("td[data-col=enabled]")).to_have_text("disabled")
            assert (await raw_get(pool, origin.port, basic("alice", password))).status == 407
            await row.locator("button.enable").click()
            await expect(row.locator("td[data-col=enabled]")).to_have_text("enabled")
            assert (await raw_get(pool, origin.port, basic("alice", password))).status == 200
            await row.locator("button.disable").click()  # the screenshot shows a disabled user
            await expect(row.locator("td[data-col=enabled]")).to_have_text("disabled")

            # a re-check from the page runs the pipeline on that proxy
            checked = pool.pipeline.checked_total
            await page.locator("#proxies tbody tr").first.locator("button.recheck").click()
            await eventually(lambda: pool.pipeline.checked_total > checked, lambda: "no re-check ran")
            await expect(page.locator("#action-error")).to_have_text("")
            checked = pool.pipeline.checked_total
            await page.click("#recheck-dead")  # every dead one: here the one that refuses connections
            await expect(page.locator("#recheck-result")).to_have_text("1 re-checked")
            assert pool.pipeline.checked_total > checked

            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000

            await page.click("#logout")
            await expect(page.locator("#login-form")).to_be_visible()
            async with plain_client() as client:
                assert await api_status(client, pool, cookie["value"]) == 401  # ended on the server too
        finally:
            await browser.close()
