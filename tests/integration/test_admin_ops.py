"""The operator's side of a running pool: token, stats, metrics, notifiers, logs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import aiohttp
import pytest
from aiosmtpd.smtp import SMTP

from gateway.admin.guard import THROTTLE
from tests.support.upstreams import closed_port
from tests.support.admin import admin_session

pytestmark = pytest.mark.timeout(60)
PROMTOOL = shutil.which("promtool")
JSON = {"Content-Type": "application/json"}


def admin(pool) -> str:
    return "http://%s:%d" % pool.admin_address


async def test_token_guards_the_api_but_not_health_metrics_judge(make_pool):
    """With admin.token set, /api/* needs the bearer token (401 without); /healthz, /metrics, /judge stay open."""
    pool = await make_pool(admin={"token": "s3cret-token"})
    pool.admin_runner.app[THROTTLE].limit = 1000  # the answers to wrong tokens here; their throttling: test_admin_throttle
    async with aiohttp.ClientSession() as client:
        for path in ("/api/stats", "/api/proxies", "/api/sources", "/api/users", "/api/nothing-here"):
            async with client.get(admin(pool) + path) as resp:
                assert resp.status == 401
                assert "token" in (await resp.json())["error"]
            for wrong in ("Bearer wrong", "Bearer s3cret-tokenX", "Basic s3cret-token", "s3cret-token"):
                async with client.get(admin(pool) + path, headers={"Authorization": wrong}) as resp:
                    assert resp.status == 401
        for path in ("/api/stats", "/api/proxies", "/api/sources", "/api/users"):
            async with client.get(admin(pool) + path, headers={"Authorization": "Bearer s3cret-token"}) as resp:
                assert resp.status == 200
        for path in ("/healthz", "/metrics", "/judge"):
            async with client.get(admin(pool) + path) as resp:
                assert resp.status == 200


async def test_every_api_route_wants_the_token_also_from_loopback(make_pool, tmp_path):
    """Without admin.token, serve generates one beside the database (0600); every /api/* route and method
    answers 401 without it, from 127.0.0.1, and nothing is changed."""
    pool = await make_pool()
    token_file = tmp_path / "pool.db.admin-token"
    assert token_file.read_text().strip() == pool.admin_token and len(pool.admin_token) >= 32
    assert token_file.stat().st_mode & 0o777 == 0o600
    routes = [(r.method, r.resource.canonical) for r in pool.admin_runner.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api")]
    assert len(routes) >= 10
    async with aiohttp.ClientSession() as client:
        for method, path in routes:
            url = admin(pool) + path.replace("{id}", "1").replace("{name}", "carol")
            async with client.request(method, url, json={"name": "carol", "amount": 5, "url": "/etc/passwd"}) as resp:
                assert resp.status == 401, (method, path)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        for tricky in ("/%61pi/stats", "/api%2fstats", "/api/../api/stats", "/api/stats/", "//api/stats", "/API/stats"):
            async with client.get(admin(pool) + tricky) as resp:
                assert resp.status in (401, 404), tricky
    assert pool.accounts.users() == [] and await pool.store.list_sources() == []


async def test_generated_token_is_reused_and_printed_by_admin_token(make_pool, tmp_path):
    """A second start on the same database reuses the generated token; `proxy-pool admin-token` prints it,
    and the log names the file, never the token."""
    db = str(tmp_path / "pool.db")
    before = subprocess.run([sys.executable, "-m", "gateway", "admin-token", "--db", db],
                            capture_output=True, text=True, timeout=30)
    assert before.returncode == 1 and len(before.stderr.strip().splitlines()) == 1
    assert "no admin token yet" in before.stderr and before.stdout == ""
    first = await make_pool()
    token = first.admin_token
    await first.stop()
    again = await make_pool()
    assert again.admin_token == token
    printed = subprocess.run([sys.executable, "-m", "gateway", "admin-token", "--db", db],
                             capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0 and printed.stdout == token + "\n"
    configured = subprocess.run([sys.executable, "-m", "gateway", "admin-token", "--db", db],
                                capture_output=True, text=True, timeout=30,
                                env={**os.environ, "PROXY_POOL_ADMIN__TOKEN": "from-config"})
    assert configured.stdout == "from-config\n"


def test_serve_logs_where_the_token_is_never_the_token(tmp_path):
    """`serve` at first start logs the token file's path; the token itself is in no log line."""
    db = tmp_path / "p.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded by the serve line (or the process ending)
            lines.append(line)
            if "proxy-pool serving" in line:
                break
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    log_text = "".join(lines) + out
    token = (tmp_path / "p.db.admin-token").read_text().strip()
    assert f"{db}.admin-token" in log_text
    assert token not in log_text


async def test_host_header_not_ours_is_421(make_pool):
    """DNS rebinding: a Host that is not loopback, the listen address or admin.allowed_hosts gets 421, even
    with the token; loopback names and allowed hosts pass; /healthz and /metrics answer any Host."""
    pool = await make_pool(admin={"token": "t0k", "allowed_hosts": ["admin.internal"]})
    bearer = {"Authorization": "Bearer t0k"}
    port = pool.admin_address[1]
    async with aiohttp.ClientSession() as client:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example",
                     "10.0.0.1", "admin.internal.evil.example"):
            async with client.get(admin(pool) + "/api/stats", headers={**bearer, "Host": host}) as resp:
                assert resp.status == 421, host
                assert "Host" in (await resp.json())["error"]
        for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", "[::1]:1",
                     "admin.internal", f"admin.internal:{port}", "127.9.9.9"):
            async with client.get(admin(pool) + "/api/stats", headers={**bearer, "Host": host}) as resp:
                assert resp.status == 200, host
        for path in ("/healthz", "/metrics"):
            async with client.get(admin(pool) + path, headers={"Host": "proxy-pool:8898"}) as resp:
                assert resp.status == 200


async def test_cross_site_requests_are_403_or_415(make_pool):
    """CSRF: a state-changing request from another Origin gets 403, one whose body is not application/json
    415; nothing changes.  The admin's own Origin and no Origin at all (curl, the CLI) are fine."""
    pool = await make_pool(admin={"token": "t0k"})
    bearer = {"Authorization": "Bearer t0k"}
    own = admin(pool)
    url = own + "/api/users"
    async with aiohttp.ClientSession() as client:
        for origin in ("http://evil.example", "null", f"http://localhost:{pool.admin_address[1]}", own + ".evil"):
            async with client.post(url, json={"name": "mallory"}, headers={**bearer, "Origin": origin}) as resp:
                assert resp.status == 403, origin
        for ctype, body in (("application/x-www-form-urlencoded", b"name=mallory"), ("text/plain", b'{"name": "mallory"}'),
                            ("multipart/form-data; boundary=x", b"--x--")):
            async with client.post(url, data=body, headers={**bearer, "Content-Type": ctype}) as resp:
                assert resp.status == 415, ctype
        assert pool.accounts.users() == []
        async with client.post(url, json={"name": "alice"}, headers={**bearer, "Origin": own}) as resp:
            assert resp.status == 201
        async with client.post(url, json={"name": "bob"}, headers=bearer) as resp:
            assert resp.status == 201
        async with client.post(url + "/bob/password", headers={**bearer, "Origin": own}) as resp:  # no body
            assert resp.status == 200
        async with client.get(url, headers={**bearer, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 200  # reading needs the token, which a foreign page does not have


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
    async with admin_session(pool) as client:
        for query, word in (("limit=abc", "limit"), ("limit=0", "limit"), ("country=germany", "country"),
                            ("protocol=ftp", "protocol"), ("offset=-1", "offset")):
            async with client.get(f"{admin(pool)}/api/proxies?{query}") as resp:
                assert resp.status == 400
                assert word in (await resp.json())["error"]
        async with client.get(f"{admin(pool)}/api/proxies/pick?country=zz") as resp:
            assert resp.status == 404
        async with client.post(f"{admin(pool)}/api/sources", data=b"not json", headers=JSON) as resp:
            assert resp.status == 400


async def test_stats_and_paging(make_pool, upstreams):
    """/api/stats counts the pool; /api/proxies pages with limit and offset; pick answers one."""
    pool = await make_pool([u.url() for u in upstreams] + [u.url("socks5") for u in upstreams])
    await pool.wait_until(lambda: pool.selector.active_count == 6)
    async with admin_session(pool) as client:
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
    assert 'proxy_pool_gateway_requests_total{method="GET",outcome="ok",protocol="http"} 3.0' in text
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
        async with admin_session(pool) as client:
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
