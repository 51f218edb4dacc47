"""Local proxy judges on loopback, in both formats found in the wild.

``/get`` answers httpbin-style JSON (``origin`` + ``headers``), ``/azenv`` azenv-style text
(``REMOTE_ADDR = ...`` and ``HTTP_*`` lines inside ``<pre>``), ``/garbage`` a 200 that is neither.
``hits`` counts requests per path and peer, so a test can tell direct calls from proxied ones.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.upstreams import closed_port

HITS = web.AppKey("hits", Counter)


def _headers(request: web.Request) -> dict[str, str]:
    """Request headers with repeated names joined, as httpbin does."""
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _count(request: web.Request) -> None:
    request.app[HITS][(request.path, request.remote)] += 1


async def httpbin_get(request: web.Request) -> web.Response:
    _count(request)
    return web.json_response(
        {"args": dict(request.query), "origin": request.remote, "headers": _headers(request)}
    )


async def forwarded_get(request: web.Request) -> web.Response:
    """httpbin behind a front that trusts forwarding headers: ``origin`` is ``X-Forwarded-For`` when sent."""
    _count(request)
    origin = request.headers.get("X-Forwarded-For", request.remote)
    return web.json_response({"args": dict(request.query), "origin": origin, "headers": _headers(request)})


async def azenv(request: web.Request) -> web.Response:
    _count(request)
    lines = [
        f"REMOTE_ADDR = {request.remote}",
        "REMOTE_PORT = 40000",
        f"REQUEST_METHOD = {request.method}",
        f"REQUEST_URI = {request.path_qs}",
        f"QUERY_STRING = {request.query_string}",
        "REQUEST_TIME = 1700000000",
    ]
    for name, value in _headers(request).items():
        lines.append(f"HTTP_{name.upper().replace('-', '_')} = {value}")
    body = (
        "<html><head><title>AZ Environment variables 1.04</title></head><body><pre>\n"
        + "\n".join(lines)
        + "\n</pre></body></html>\n"
    )
    return web.Response(text=body, content_type="text/html")


async def garbage(request: web.Request) -> web.Response:
    _count(request)
    return web.Response(text="<html>Welcome to nginx!</html>", content_type="text/html")


def judge_app() -> web.Application:
    app = web.Application()
    app[HITS] = Counter()
    app.router.add_get("/get", httpbin_get)
    app.router.add_get("/azenv", azenv)
    app.router.add_get("/forwarded-get", forwarded_get)
    app.router.add_get("/garbage", garbage)
    return app


@dataclass
class Judge:
    base: str
    app: web.Application
    runner: web.AppRunner = field(repr=False)

    @property
    def json_url(self) -> str:
        return f"{self.base}/get?show_env=1"

    @property
    def forwarded_url(self) -> str:
        """A self-hosted httpbin that reports ``X-Forwarded-For`` as ``origin``."""
        return f"{self.base}/forwarded-get"

    @property
    def azenv_url(self) -> str:
        return f"{self.base}/azenv"

    @property
    def garbage_url(self) -> str:
        return f"{self.base}/garbage"

    def hits(self, path: str, peer: str | None = None) -> int:
        return sum(n for (p, r), n in self.app[HITS].items() if p == path and (peer is None or r == peer))


@contextlib.asynccontextmanager
async def running_judge(host: str = "127.0.0.1") -> AsyncIterator[Judge]:
    """A judge serving both formats on ``host`` at a free port."""
    app = judge_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Judge(f"http://{host}:{port}", app, runner)
    finally:
        await runner.cleanup()


def down_judge_url(host: str = "127.0.0.1") -> str:
    """A judge URL nothing listens on: every call is refused."""
    return f"http://{host}:{closed_port(host)}/get?show_env=1"
