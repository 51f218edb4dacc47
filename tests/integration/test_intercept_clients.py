"""Real clients through the interception port, each trusting proxy-pool's CA its own way, each keeping one
TLS session alive: curl (--cacert), requests.Session, httpx.Client, aiohttp and headless Chromium (the CA's
SPKI trusted): the requests inside leave through different upstreams.  And credits: with auth = "users",
every request inside is charged, the CONNECT carrying them is not."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import ssl
import tempfile
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization

from tests.integration.test_intercept import SITE, Env, env, get, peer_of, session  # noqa: F401  (env: the fixture)

pytestmark = pytest.mark.timeout(120)
EXITS = {"127.0.0.2", "127.0.0.3"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def url(env: Env, path: str = "/echo") -> str:
    return f"https://127.0.0.1:{env.port}{path}"


def proxy(env: Env) -> str:
    host, port = env.intercept
    return f"http://{host}:{port}"


async def test_curl_with_cacert(env):
    """curl --cacert <(proxy-pool ca) -x http://GATEWAY: four URLs on one connection, two exits."""
    async with env.gateway():
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--cacert", str(env.ca_file), "-x", proxy(env), *(url(env) for _ in range(4)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        peers = [json.loads(part)["peer"] for part in out.decode().replace("}{", "}\n{").splitlines()]
        assert len(peers) == 4 and set(peers) == EXITS
        assert env.server is not None and len(env.server._clients) <= 1  # noqa: SLF001  (one client connection)


def _requests_peers(env: Env) -> list[str]:
    with requests.Session() as s:
        s.proxies = {"https": proxy(env)}
        s.verify = str(env.ca_file)
        return [s.get(url(env), timeout=20, verify=str(env.ca_file)).json()["peer"] for _ in range(4)]


def _httpx_peers(env: Env) -> list[str]:
    with httpx.Client(proxy=proxy(env), verify=env.client_context(), timeout=20) as client:
        return [client.get(url(env)).json()["peer"] for _ in range(4)]


@pytest.mark.parametrize("kind", ["requests", "httpx", "aiohttp"])
async def test_python_clients_keep_one_session_and_rotate(env, kind):
    async with env.gateway():
        if kind == "requests":
            peers = await asyncio.to_thread(_requests_peers, env)
        elif kind == "httpx":
            peers = await asyncio.to_thread(_httpx_peers, env)
        else:
            connector = aiohttp.TCPConnector(limit=1)  # one connection: every request on one TLS session
            async with aiohttp.ClientSession(connector=connector) as client:
                peers = []
                for _ in range(4):
                    async with client.get(url(env), proxy=proxy(env), ssl=env.client_context()) as resp:
                        peers.append((await resp.json())["peer"])
        assert set(peers) == EXITS, peers


async def test_every_request_inside_is_charged_not_the_connect(make_pool, env):
    """auth = "users": a CONNECT with wrong credentials is 407; alice's session of three requests costs 3."""
    ups = env.ups
    pool = await make_pool(
        [ups[0].url("http"), ups[1].url("socks5")],
        gateway={
            "auth": "users", "allowed_connect_ports": "*", "intercept_listen": "127.0.0.1:0",
            "intercept_verify": str(env.bundle),
        },
    )  # fmt: skip
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    alice = await pool.accounts.add_user("alice", 10)
    env.server = pool.gateway
    reader, writer = await asyncio.open_connection(*env.intercept)
    writer.write(f"CONNECT 127.0.0.1:{env.port} HTTP/1.1\r\nProxy-Authorization: Basic {base64.b64encode(b'alice:nope').decode()}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 407")
    writer.close()
    token = base64.b64encode(f"alice:{alice.password}".encode()).decode()
    reader, writer = await session(env, headers=f"Proxy-Authorization: Basic {token}\r\n")
    peers = {peer_of((await get(reader, writer))[2]) for _ in range(3)}
    assert peers == EXITS
    writer.close()
    assert pool.accounts.balance("alice") == 7


# Chromium ---------------------------------------------------------------------------------------
PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {
  const peers = [];
  for (let i = 0; i < 6; i++) peers.push((await (await fetch('/echo?i=' + i, {cache: 'no-store'})).json()).peer);
  document.getElementById('out').textContent = 'PEERS=' + JSON.stringify(peers);
})();
</script></body></html>"""


def spki_hash(env: Env) -> str:
    """What --ignore-certificate-errors-spki-list wants: base64 SHA-256 of the CA's SubjectPublicKeyInfo
    (the CA certificate travels in every minted chain)."""
    der = env.ca.cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
async def test_chromium_trusting_the_ca_spki_rotates_inside_https(env, tmp_path):
    """A page on an HTTPS origin fetches six times through the interception port; Chromium trusts only the
    CA's SPKI (no --ignore-certificate-errors): the page loads and its fetches leave through both exits."""
    page_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    env.site_ca.issue_cert("127.0.0.1", SITE).configure_cert(page_ssl)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"peer": request.remote}, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/echo", echo)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server(ssl=page_ssl)
    try:
        async with env.gateway():
            dom = await _dump_dom(env, f"https://127.0.0.1:{origin.port}/", tmp_path)
            if not dom.strip():  # a starved machine: the browser did not start; one more try
                dom = await _dump_dom(env, f"https://127.0.0.1:{origin.port}/", tmp_path)
            marker = dom.find("PEERS=")
            assert marker >= 0, dom[:600]
            peers: list[Any] = json.loads(dom[marker + 6 : dom.index("]", marker) + 1])
            assert len(peers) == 6 and set(peers) == EXITS
    finally:
        await origin.close()


async def _dump_dom(env: Env, page: str, tmp_path) -> str:
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--disable-default-apps", "--disable-dev-shm-usage", "--no-default-browser-check",
        f"--ignore-certificate-errors-spki-list={spki_hash(env)}",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}",
        f"--proxy-server={proxy(env)}", "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=20000", "--dump-dom", page,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode("utf-8", "replace")
