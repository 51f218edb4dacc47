"""Secrets in source URLs and upstream credentials (issue 12, finding 7): stored whole, shown masked in
every log line, API answer, CLI table and event payload."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.admin import admin_session

pytestmark = pytest.mark.timeout(90)

SECRETS = ("SRCPASS", "SRCKEY", "TOKENXYZ")
YEARLY = "0 0 1 1 *"


class Hooks:
    """A list server that fails (so the source fails) and a webhook receiver, on one aiohttp app."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def failing_list(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="down")

    async def hook(self, request: web.Request) -> web.Response:
        self.payloads.append(await request.json())
        self.arrived.set()
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/list.txt", self.failing_list)
        app.router.add_post("/hook", self.hook)
        return app


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, timeout=60)


async def test_source_and_upstream_secrets_never_shown(make_pool, tmp_path, caplog):
    """A failing source http://srcuser:SRCPASS@host/list.txt?apikey=SRCKEY and an upstream with a lone
    username (http://TOKENXYZ@host:port): neither secret is in the log, /api/sources, /api/stats,
    /api/proxies, `sources list`, `proxies` or the webhook's source.failed payload; both are stored whole."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="aiosqlite")
    caplog.set_level(logging.WARNING, logger="aiohttp.access")  # as setup_logging does; the test's own servers
    hooks = Hooks()
    server = TestServer(hooks.app(), host="127.0.0.1")
    await server.start_server()
    port = server.port
    try:
        source_url = f"http://srcuser:SRCPASS@127.0.0.1:{port}/list.txt?apikey=SRCKEY"
        pool = await make_pool(
            ["http://TOKENXYZ@127.0.0.201:1"],
            sources=[{"url": source_url, "schedule": YEARLY}],
            notifiers={"webhook": {"url": str(server.make_url("/hook")), "retries": 0, "subscribes_to": ["source.*"]}},
        )
        async with asyncio.timeout(30):
            await hooks.arrived.wait()
        await pool.wait_until(lambda: len(pool.selector) == 1)
        answers = {}
        async with admin_session(pool) as client:
            for path in ("/api/sources", "/api/stats", "/api/proxies"):
                async with client.get("http://%s:%d" % pool.admin_address + path) as resp:
                    assert resp.status == 200
                    answers[path] = await resp.text()
        await pool.scraper.scrape((await pool.store.list_sources())[0])  # once more, by hand
        stored = [s.url for s in await pool.store.list_sources()]
        db = pool.settings.storage.path
        listed = [cli("sources", "list", "--db", db), cli("sources", "list", "--db", db, "--format", "json"),
                  cli("proxies", "--db", db, "--format", "json")]  # fmt: skip
        exported = cli("proxies", "--db", db, "--format", "txt")
    finally:
        await server.close()

    shown = {
        "log": caplog.text,
        "webhook": json.dumps(hooks.payloads),
        **answers,
        **{f"cli {i}": done.stdout + done.stderr for i, done in enumerate(listed)},
    }
    for where, text in shown.items():
        for secret in SECRETS:
            assert secret not in text, (where, secret)
    failed = next(p for p in hooks.payloads if p["type"] == "source.failed")
    assert failed["payload"]["source"] == f"http://srcuser:***@127.0.0.1:{port}/list.txt?apikey=***"
    assert "http://srcuser:***@" in caplog.text and "apikey=***" in caplog.text  # the WARNING line, masked
    assert json.loads(answers["/api/sources"])["sources"][0]["url"] == failed["payload"]["source"]
    assert json.loads(answers["/api/proxies"])["proxies"][0]["url"] == "http://***@127.0.0.201:1"
    assert "apikey=***" in listed[0].stdout and "http://***@127.0.0.201:1" in listed[2].stdout
    assert source_url in stored  # stored whole: the scraper still sends the credentials
    assert exported.stdout.strip() == "http://TOKENXYZ@127.0.0.201:1"  # the export the user asked for


def test_cli_errors_about_a_source_mask_it(tmp_path):
    """`sources add` of an unsupported or duplicate URL names it masked."""
    db = str(tmp_path / "p.db")
    bad = cli("sources", "add", "ftp://u:SRCPASS@h.example/l.txt?apikey=SRCKEY", "--db", db)
    assert bad.returncode == 2 and "SRCPASS" not in bad.stderr and "SRCKEY" not in bad.stderr
    assert "ftp://u:***@h.example/l.txt?apikey=***" in bad.stderr
    url = "https://TOKENXYZ@h.example/l.txt?apikey=SRCKEY"
    first = cli("sources", "add", url, "--db", db)
    again = cli("sources", "add", url, "--db", db)
    assert first.returncode == 0 and again.returncode == 2
    for done in (first, again):
        assert not any(s in done.stdout + done.stderr for s in SECRETS)
    assert "https://***@h.example/l.txt?apikey=***" in again.stderr
