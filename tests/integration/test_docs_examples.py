"""Every snippet the docs mark runnable (``<!-- runnable -->`` before a ```sh fence) runs as written.

One real ``proxy-pool serve`` (a subprocess, in a temporary working directory so ``./proxy-pool.db``,
its token and its serve lock are its own) over pproxy upstreams on loopback, and an origin on loopback.
Each snippet runs in bash with ``set -euo pipefail`` in that directory, with ``proxy-pool`` on PATH; the
documented addresses are the only thing rewritten: ``127.0.0.1:8899`` is the gateway, ``127.0.0.1:8898``
the admin, ``http://example.com`` the origin.  A snippet that fails, or prints nothing, fails the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.replicas import serve_environ, start_replica
from tests.support.upstreams import Upstream
from tests.support.waiting import across_processes

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = re.compile(r"^<!-- runnable -->\s*\n```(?:sh|bash)\n(?P<code>.*?)^```", re.M | re.S)


def runnable_snippets() -> list[tuple[str, str]]:
    """(page, code) in the order a reader meets them: README first, then the docs' pages."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [
        (str(page.relative_to(ROOT)), m.group("code"))
        for page in pages
        for m in RUNNABLE.finditer(page.read_text(encoding="utf-8"))
    ]


@pytest.fixture
async def site() -> AsyncIterator[TestServer]:
    """The docs' example.com: every path answers 200 with a page."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"<html><body>{request.path}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def test_the_docs_mark_the_examples_that_matter() -> None:
    code = "\n".join(c for _, c in runnable_snippets())
    for must in (
        "curl -sf -x http://127.0.0.1:8899",
        "proxy-pool admin-token",
        "/api/stats",
        "proxy-pool users add",
        "proxy-pool proxies",
    ):
        assert must in code, must


async def test_every_runnable_snippet_runs(
    tmp_path: Path, upstreams: list[Upstream], site: TestServer
) -> None:
    (tmp_path / "my-proxies.txt").write_text("".join(u.url() + "\n" for u in upstreams))
    env = {"PROXY_POOL_CHECKER__INTEGRITY_PAGES": "[]"}
    serve = await start_replica("proxy-pool.db", "docs", tmp_path, "--proxies", "my-proxies.txt", env=env)
    try:

        async def active() -> bool:
            status, body = await serve.api("GET", "/api/proxies?status=active")
            return status == 200 and body["total"] > 0

        await across_processes(active, "an active proxy in the pool")
        environ = serve_environ(tmp_path, env)
        environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])
        gateway, admin = f"{serve.gateway[0]}:{serve.gateway[1]}", f"{serve.admin[0]}:{serve.admin[1]}"
        for page, code in runnable_snippets():
            script = (
                code.replace("127.0.0.1:8899", gateway)
                .replace("127.0.0.1:8898", admin)
                .replace("http://example.com", f"http://{site.host}:{site.port}")
            )
            proc = await asyncio.create_subprocess_exec(
                "bash", "-euo", "pipefail", "-c", script,
                cwd=tmp_path, env=environ, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            async with asyncio.timeout(60):
                out, _ = await proc.communicate()
            said = out.decode(errors="replace")
            assert proc.returncode == 0, f"{page}: the snippet failed ({proc.returncode}):\n{code}\n{said}"
            assert said.strip(), f"{page}: the snippet printed nothing:\n{code}"
    finally:
        await serve.stop()
