"""The dashboard as the README shows it: a demo pool that looks like a real one, in headless Chromium.

Everything is on loopback and real: three proxy lists served at the paths of well-known public lists, two
dozen pproxy upstreams on 127.0.0.2-25 placed in eight countries by a small GeoIP database, a few
entries that are dead, and three users with usage from requests through the gateway.  The page must show
it (several countries, the named sources, the users' requests) and nothing of the test's own (no
temporary path).  ``DASHBOARD_SCREENSHOT=docs/dashboard.png`` writes the picture the docs use; without
it the screenshot goes to a temporary file, so a normal run leaves the tree clean.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pool.models import ProxyStatus
from tests.integration.test_dashboard import CHROMIUM, CHROMIUM_ARGS, TOKEN
from tests.integration.test_users_credits import admin_url, basic, raw_get
from tests.support.admin import admin_session
from tests.support.geoip import build_country_db
from tests.support.upstreams import Upstream, closed_port, start_pproxy

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]

COUNTRIES = ["US", "DE", "NL", "FR", "GB", "JP", "BR", "SG"]
LISTS = {  # path -> (protocol the list's bare entries are, which upstreams it carries)
    "/TheSpeedX/PROXY-List/master/http.txt": ("http", range(0, 12)),
    "/monosans/proxy-list/main/proxies/socks5.txt": ("socks5", range(8, 20)),
    "/proxifly/free-proxy-list/main/proxies/all/data.txt": ("http", range(16, 24)),
}


@pytest.fixture
async def demo_upstreams() -> AsyncIterator[list[Upstream]]:
    ups = [await start_pproxy(f"127.0.0.{i + 2}") for i in range(24)]
    try:
        yield ups
    finally:
        for up in ups:
            await up.stop()


@pytest.fixture
async def list_server(demo_upstreams: list[Upstream]) -> AsyncIterator[TestServer]:
    """The lists, at the paths the public lists have; each also names two proxies that are gone."""
    bodies = {}
    for path, (_, carried) in LISTS.items():
        lines = [f"{demo_upstreams[i].host}:{demo_upstreams[i].port}" for i in carried]
        lines += [f"127.0.0.1:{closed_port()}" for _ in range(2)]
        bodies[path] = "\n".join(lines) + "\n"

    async def serve_list(request: web.Request) -> web.Response:
        return web.Response(text=bodies[request.path], content_type="text/plain")

    app = web.Application()
    for path in LISTS:
        app.router.add_get(path, serve_list)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def site() -> AsyncIterator[TestServer]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/echo", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_the_dashboard_of_a_demo_pool(make_pool, demo_upstreams, list_server, site, tmp_path: Path):
    playwright_api = pytest.importorskip("playwright.async_api")
    geoip = build_country_db(
        tmp_path / "countries.mmdb",
        {up.host: COUNTRIES[i % len(COUNTRIES)] for i, up in enumerate(demo_upstreams)},
    )
    sources = [
        {"url": str(list_server.make_url(path)), "default_protocol": protocol, "parser": "plaintext"}
        for path, (protocol, _) in LISTS.items()
    ]
    pool = await make_pool(
        sources=sources,
        gateway={"auth": "users"},
        admin={"token": TOKEN},
        checker={"geoip_db": str(geoip)},
    )
    dead_entries = 2 * len(LISTS)
    # an upstream on two lists of different protocols is two proxies (http:// and socks5://)
    proxies = len({(protocol, i) for protocol, carried in LISTS.values() for i in carried})
    await pool.wait_until(
        lambda: (
            pool.selector.active_count == proxies
            and sum(p.status is ProxyStatus.DEAD for p in pool.selector.proxies()) == dead_entries
        ),
        timeout=60,
    )

    async with admin_session(pool) as api:
        for name, credits, requests in (("alice", 5000, 24), ("bob", 800, 9), ("carol", 40, 3)):
            async with api.post(
                admin_url(pool, "/api/users"), json={"name": name, "credits": credits}
            ) as resp:
                assert resp.status == 201
                password = (await resp.json())["password"]
            for _ in range(requests):
                assert (await raw_get(pool, site.port, basic(name, password))).status == 200
        async with api.patch(
            admin_url(pool, "/api/users/carol"), json={"max_requests_per_second": 2}
        ) as resp:
            assert resp.status == 200

    expect = playwright_api.expect
    expect.set_options(timeout=15_000)
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
            await page.goto(admin_url(pool, "/"))
            await page.fill("#login-token", TOKEN)
            await page.click("#login-form button")
            await page.wait_for_selector("body[data-ready='1']")

            await expect(page.locator("#pool-active")).to_have_text(str(proxies))
            await expect(page.locator("#chart-countries svg rect.bar")).to_have_count(len(COUNTRIES))
            await expect(page.locator("#sources tbody tr")).to_have_count(len(LISTS))
            for path in LISTS:
                await expect(page.locator("#sources")).to_contain_text(path)
            row = page.locator("#users tr[data-key='alice']")
            await expect(row.locator("td[data-col=requests]")).to_have_text("24")
            text = await page.locator("body").inner_text()
            assert str(tmp_path) not in text and "/tmp/" not in text

            shot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            if shot != tmp_path / "dashboard.png":
                shutil.copy(tmp_path / "dashboard.png", shot)
        finally:
            await browser.close()
