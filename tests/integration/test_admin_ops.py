"""The operator's side of a running pool: token, stats, metrics, notifiers, logs."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import aiohttp
import pytest
from aiosmtpd.smtp import SMTP

from tests.support.upstreams import closed_port

pytestmark = pytest.mark.timeout(60)
PROMTOOL = shutil.which("promtool")


def admin(pool) -> str:
    return "http://%s:%d" % pool.admin_address


async def test_token_guards_the_api_but_not_health_metrics_judge(make_pool):
    """With admin.token set, /api/* needs the bearer token (401 without); /healthz, /metrics, /judge stay open."""
    pool = await make_pool(admin={"token": "s3cret-token"})
    async with aiohttp.ClientSession() as client:
        for path in ("/api/stats", "/api/proxies", "/api/sources"):
            async with client.get(admin(pool) + path) as resp:
                assert resp.status == 401
                assert "token" in (await resp.json())["error"]
            async with client.get(admin(pool) + path, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
            async with client.get(admin(pool) + path, headers={"Authorization": "Bearer s3cret-token"}) as resp:
                assert resp.status == 200
        for path in ("/healthz", "/metrics", "/judge"):
            async with client.get(admin(pool) + path) as resp:
                assert resp.status == 200


def test_non_loopback_admin_without_token_refuses_to_start(tmp_path):
    """serve --admin-listen 0.0.0.0:PORT without a token exits 2 with one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--admin-listen", "0.0.0.0:0",
         "--db", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "admin.token" in proc.stderr


def test_open_gateway_refuses_to_start(tmp_path):
    """A non-loopback gateway with auth none refuses to start unless allow_open."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--listen", "0.0.0.0:0",
         "--db", str(tmp_path / "x.db")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "open proxy" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


async def test_api_errors_are_json_with_a_message(make_pool):
    """Bad parameters get a 4xx JSON error with a clear message."""
    pool = await make_pool()
    async with aiohttp.ClientSession() as client:
        for query, word in (("limit=abc", "limit"), ("limit=0", "limit"), ("country=germany", "country"),
                            ("protocol=ftp", "protocol"), ("offset=-1", "offset")):
            async with client.get(f"{admin(pool)}/api/proxies?{query}") as resp:
                assert resp.status == 400
                assert word in (await resp.json())["error"]
        async with client.get(f"{admin(pool)}/api/proxies/pick?country=zz") as resp:
            assert resp.status == 404
        async with client.post(f"{admin(pool)}/api/sources", data=b"not json") as resp:
            assert resp.status == 400


async def test_stats_and_paging(make_pool, upstreams):
    """/api/stats counts the pool; /api/proxies pages with limit and offset; pick answers one."""
    pool = await make_pool([u.url() for u in upstreams] + [u.url("socks5") for u in upstreams])
    await pool.wait_until(lambda: pool.selector.active_count == 6)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin(pool)}/api/stats") as resp:
            stats = await resp.json()
        assert stats["pool"]["by_status"] == {"active": 6}
        assert stats["pool"]["by_protocol"] == {"http": 3, "socks5": 3}
        assert stats["sources"][0]["last_found"] == 6
        assert stats["checker"]["checked"] >= 6
        ids = []
        for offset in (0, 2, 4):
            async with client.get(f"{admin(pool)}/api/proxies?limit=2&offset={offset}") as resp:
                page = await resp.json()
            assert page["total"] == 6 and len(page["proxies"]) == 2
            ids += [p["id"] for p in page["proxies"]]
        assert len(set(ids)) == 6
        async with client.get(f"{admin(pool)}/api/proxies/pick?protocol=socks5") as resp:
            picked = await resp.json()
        assert picked["url"].startswith("socks5://")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
async def test_live_metrics_pass_promtool(make_pool, upstreams, origin):
    """The /metrics of a pool that served traffic passes `promtool check metrics`; no address in labels."""
    pool = await make_pool([upstreams[0].url()])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    gw = "http://%s:%d" % pool.gateway_address
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy=gw) as resp:
                await resp.read()
        async with client.get(f"{admin(pool)}/metrics") as resp:
            text = await resp.text()
    proc = await asyncio.create_subprocess_exec(
        PROMTOOL, "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, out.decode()
    assert 'proxy_pool_gateway_requests_total{method="GET",outcome="ok"} 3.0' in text
    assert 'proxy_pool_proxies{protocol="http",status="active"} 1.0' in text
    assert upstreams[0].host not in text


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope.content)
        self.arrived.set()
        return "250 OK"


async def test_pool_low_mail_and_dead_notifier(make_pool, upstreams, origin):
    """pool_low reaches a real SMTP server; a dead webhook shows notifier_up 0 and the gateway keeps serving."""
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(inbox, hostname="mail.test", loop=loop), "127.0.0.1", 0)
    try:
        port = smtp.sockets[0].getsockname()[1]
        pool = await make_pool(
            [u.url() for u in upstreams[:2]],
            pool={"low_threshold": 2},
            notifiers={
                "smtp": {"host": "127.0.0.1", "port": port, "to": ["ops@example.test"], "subscribes_to": ["proxy.*"]},
                "webhook": {"url": f"http://127.0.0.1:{closed_port()}/hook", "retries": 0},
            },
        )
        await pool.wait_until(lambda: pool.selector.active_count == 2)
        await pool.check_notifiers()
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{admin(pool)}/api/stats") as resp:
                notifiers = {n["name"]: n for n in (await resp.json())["notifiers"]}
            async with client.get(f"{admin(pool)}/metrics") as resp:
                metrics = await resp.text()
        assert notifiers["smtp"]["up"] is True and notifiers["webhook"]["up"] is False
        assert 'proxy_pool_notifier_up{notifier="webhook"} 0.0' in metrics
        victim = next(p for p in pool.selector.proxies() if p.host == upstreams[0].host)
        for _ in range(3):
            pool.selector.report(victim, ok=False)  # the gateway's passive health benches it
        async with asyncio.timeout(20):
            while not any(b"pool low" in m for m in inbox.messages):
                inbox.arrived.clear()
                await inbox.arrived.wait()
        mail = next(m for m in inbox.messages if b"pool low" in m).decode()
        assert "threshold: 2" in mail and "active_count: 1" in mail
        # the dead webhook never slowed the gateway
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{origin.port}/echo", proxy="http://%s:%d" % pool.gateway_address) as resp:
                assert resp.status == 200
    finally:
        smtp.close()


def test_json_logs_and_no_per_request_lines(tmp_path):
    """--log-format json gives one JSON object a line; serve logs start-up, not requests."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--log-format", "json",
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--db", str(tmp_path / "x.db")],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(20):  # start-up lines (plugins that opted out, ...) until "serving"
            entry = json.loads(proc.stderr.readline())
            assert {"at", "level", "logger", "message"} <= set(entry)
            if "serving" in entry["message"]:
                break
        else:
            raise AssertionError("no 'serving' line")
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0
    for line in rest.strip().splitlines():
        json.loads(line)


async def test_pac_file_is_open_and_names_the_advertised_address(make_pool):
    """/proxy.pac and /wpad.dat answer without the token, as a PAC, with gateway.public_address in them."""
    pool = await make_pool(admin={"token": "sekrit"}, gateway={"public_address": "gw.lan:3128"})
    host, port = pool.admin_address
    async with aiohttp.ClientSession() as client:
        for path in ("/proxy.pac", "/wpad.dat"):
            async with client.get(f"http://{host}:{port}{path}") as resp:
                body = await resp.text()
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/x-ns-proxy-autoconfig")
            assert "function FindProxyForURL(url, host)" in body
            assert "PROXY gw.lan:3128; SOCKS5 gw.lan:3128" in body
            assert "sekrit" not in body
        async with client.get(f"http://{host}:{port}/api/stats") as resp:
            assert resp.status == 401  # the token still guards the API


async def test_pac_file_defaults_to_the_listen_address(make_pool):
    """Without public_address the PAC names the gateway's bound address."""
    pool = await make_pool()
    host, port = pool.admin_address
    gw_host, gw_port = pool.gateway_address
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://{host}:{port}/proxy.pac") as resp:
            body = await resp.text()
    assert f"PROXY {gw_host}:{gw_port}; SOCKS5 {gw_host}:{gw_port}" in body
