"""A real browser (headless Chromium) through the gateway: plain HTTP, HTTPS, and per-request rotation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed"),
    pytest.mark.timeout(120),
]

PAGE = """<!doctype html><html><body><h1 id="title">proxy-pool browser page</h1>
<pre id="peer">{peer}</pre><pre id="out">pending</pre>
<script>
(async () => {{
  const peers = [];
  for (let i = 0; i < {count}; i++) {{
    const r = await fetch('/echo?i=' + i, {{cache: 'no-store'}});
    peers.push((await r.json()).peer);
  }}
  document.getElementById('out').textContent = 'PEERS=' + JSON.stringify(peers);
}})();
</script></body></html>"""


def browser_app(count: int) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE.format(peer=request.remote, count=count), content_type="text/html")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"peer": request.remote}, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/echo", echo)
    return app


async def dump_dom(gateway: tuple[str, int], url: str, tmp_path, proxy: list[str] | None = None) -> str:
    """The page's DOM after its scripts ran.  A browser that printed nothing at all (it failed to
    start, which happens on a starved machine) gets one more try; an error page is never retried.
    ``proxy``: the proxy flags, default ``--proxy-server=http://GATEWAY`` without a loopback bypass."""
    dom, err = await _dump_dom(gateway, url, tmp_path, proxy)
    if not dom.strip():
        dom, err = await _dump_dom(gateway, url, tmp_path, proxy)
    assert dom.strip(), f"chromium printed nothing: {err[-800:]}"
    return dom


async def _dump_dom(gateway: tuple[str, int], url: str, tmp_path, proxy: list[str] | None) -> tuple[str, str]:
    host, port = gateway
    if proxy is None:
        proxy = [f"--proxy-server=http://{host}:{port}", "--proxy-bypass-list=<-loopback>"]
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}",
        *proxy,
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def peers_of(dom: str) -> list[str]:
    match = re.search(r"PEERS=(\[.*?\])", dom)
    assert match, f"the page script did not finish: {dom[:500]}"
    return json.loads(match.group(1))


@contextlib.asynccontextmanager
async def page_origins() -> AsyncIterator[tuple[TestServer, TestServer]]:
    """The browser page (two requests from its script) on plain HTTP and on HTTPS (a trustme cert for 127.0.0.1)."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    http_origin = TestServer(browser_app(2), host="127.0.0.1")
    https_origin = TestServer(browser_app(2), host="127.0.0.1")
    try:
        await http_origin.start_server()
        await https_origin.start_server(ssl=ctx)
        yield http_origin, https_origin
    finally:
        await http_origin.close()
        await https_origin.close()


async def test_browser_loads_http_and_https_pages_through_gateway(make_pool, upstreams, tmp_path):
    """Chromium loads a plain-HTTP and an HTTPS page from local origins through the gateway."""
    async with page_origins() as (http_origin, https_origin):
        pool = await make_pool(
            [u.url() for u in upstreams],
            gateway={"allowed_connect_ports": "*"},
            pool={"passive_failure_limit": 1000},  # the browser's own background calls fail (no internet)
        )
        await pool.wait_until(lambda: pool.selector.active_count == 3)
        upstream_hosts = {u.host for u in upstreams}
        dom = await dump_dom(pool.gateway_address, f"http://127.0.0.1:{http_origin.port}/", tmp_path)
        assert "proxy-pool browser page" in dom
        assert set(peers_of(dom)) <= upstream_hosts
        dom = await dump_dom(pool.gateway_address, f"https://127.0.0.1:{https_origin.port}/", tmp_path)
        assert "proxy-pool browser page" in dom
        assert set(peers_of(dom)) <= upstream_hosts


async def test_browser_requests_rotate_per_request(make_pool, upstreams, tmp_path):
    """A page whose script makes 24 requests: they leave through at least 3 upstreams."""
    origin = TestServer(browser_app(24), host="127.0.0.1")
    await origin.start_server()
    try:
        pool = await make_pool([u.url() for u in upstreams], pool={"passive_failure_limit": 1000})
        await pool.wait_until(lambda: pool.selector.active_count == 3)
        dom = await dump_dom(pool.gateway_address, f"http://127.0.0.1:{origin.port}/", tmp_path)
        peers = peers_of(dom)
        assert len(peers) == 24
        assert len(set(peers)) >= 3
    finally:
        await origin.close()


async def test_browser_follows_the_pac_file(make_pool, tmp_path):
    """With --proxy-pac-url at the admin's /proxy.pac, a loopback page loads direct and a public name goes to
    the gateway (which, with an empty pool, answers its own 503: the proof the browser asked it)."""
    origin = TestServer(browser_app(1), host="127.0.0.1")
    await origin.start_server()
    try:
        pool = await make_pool([])
        admin_host, admin_port = pool.admin_address
        pac = [f"--proxy-pac-url=http://{admin_host}:{admin_port}/proxy.pac"]
        dom = await dump_dom(pool.gateway_address, f"http://127.0.0.1:{origin.port}/", tmp_path, pac)
        assert "proxy-pool browser page" in dom
        assert peers_of(dom) == ["127.0.0.1"]  # direct: no upstream, no gateway
        dom = await dump_dom(pool.gateway_address, "http://pac-target.example/", tmp_path, pac)
        assert "no active proxy in the pool yet" in dom, dom[:400]
    finally:
        await origin.close()


async def test_browser_through_the_gateway_as_a_socks5_proxy(make_pool, upstreams, tmp_path):
    """Chromium with --proxy-server=socks5://GATEWAY (the same port as HTTP) loads an HTTP and an HTTPS page."""
    async with page_origins() as (http_origin, https_origin):
        pool = await make_pool(
            [u.url() for u in upstreams], gateway={"allowed_connect_ports": "*"}, pool={"passive_failure_limit": 1000}
        )
        await pool.wait_until(lambda: pool.selector.active_count == 3)
        host, port = pool.gateway_address
        socks = [f"--proxy-server=socks5://{host}:{port}", "--proxy-bypass-list=<-loopback>"]
        upstream_hosts = {u.host for u in upstreams}
        for origin, scheme in ((http_origin, "http"), (https_origin, "https")):
            dom = await dump_dom(pool.gateway_address, f"{scheme}://127.0.0.1:{origin.port}/", tmp_path, socks)
            assert "proxy-pool browser page" in dom, dom[:400]
            assert set(peers_of(dom)) <= upstream_hosts
        assert pool.metrics.request_counts.get(("CONNECT", "ok", "socks5"), 0) >= 2
