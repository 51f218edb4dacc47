"""The sources routes of the admin API on a whole, running ProxyPool (make_pool), over real HTTP.

Proxy addresses in the lists are 127.0.0.201 on ports nothing listens on, so the checker the new
proxies are handed to only ever dials loopback (and is refused).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from config import ConfigError
from gateway.app import ProxyPool
from pool.models import Event
from tests.support.admin import admin_headers

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
PoolFactory = Callable[..., Awaitable[ProxyPool]]

LIST = b"127.0.0.201:1\n127.0.0.201:2\nsocks5://127.0.0.201:3\n"
YEARLY = "0 0 1 1 *"  # the scheduler runs such a source once at first, then not again during a test


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


class Target(NamedTuple):
    url: str
    headers: dict[str, str]


def api(pool: ProxyPool, path: str) -> Target:
    """A route of the pool's admin API with the operator's token."""
    assert pool.admin_address is not None
    host, port = pool.admin_address
    return Target(f"http://{host}:{port}{path}", admin_headers(pool))


async def call(session: aiohttp.ClientSession, method: str, target: Target, **kwargs: Any) -> tuple[int, Any]:
    headers = {**target.headers, **kwargs.pop("headers", {})}
    async with session.request(method, target.url, headers=headers, **kwargs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


class ScrapeWatch:
    """Waits for the scheduler's scrapes through an in-process listener on the pool's event bus."""

    def __init__(self, pool: ProxyPool) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        pool.events.add_listener(self._seen)

    def _seen(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, type_: str, source_id: int) -> Event:
        async with asyncio.timeout(30):
            while True:
                for event in self.events:
                    if event.type == type_ and event.payload.get("source_id") == source_id:
                        return event
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def listing(tmp_path: Path) -> Path:
    path = tmp_path / "mine.txt"
    path.write_bytes(LIST)
    return path


async def test_add_list_and_delete_a_source(
    make_pool: PoolFactory, session: aiohttp.ClientSession, listing: Path
) -> None:
    """POST adds (201, the source), GET lists it, DELETE removes it, a second DELETE is 404."""
    pool = await make_pool()
    assert await call(session, "GET", api(pool, "/api/sources")) == (200, {"sources": []})

    status, created = await call(
        session,
        "POST",
        api(pool, "/api/sources"),
        json={"url": str(listing), "parser": "plaintext", "schedule": YEARLY, "protocol": "socks5"},
    )
    assert status == 201
    assert {k: created[k] for k in ("url", "parser", "schedule", "default_protocol", "origin")} == {
        "url": listing.as_uri(),
        "parser": "plaintext",
        "schedule": YEARLY,
        "default_protocol": "socks5",
        "origin": "api",
    }
    assert isinstance(created["id"], int)

    status, listed = await call(session, "GET", api(pool, "/api/sources"))
    assert status == 200
    assert [s["id"] for s in listed["sources"]] == [created["id"]]

    status, deleted = await call(session, "DELETE", api(pool, f"/api/sources/{created['id']}"))
    assert (status, deleted["deleted"]) == (200, created["id"])
    # its proxies (whatever its scrape had found by then) went with it: no other source lists them
    assert await pool.store.all_proxies() == [] and len(pool.selector) == 0
    assert await call(session, "GET", api(pool, "/api/sources")) == (200, {"sources": []})
    status, body = await call(session, "DELETE", api(pool, f"/api/sources/{created['id']}"))
    assert (status, body) == (404, {"error": f"no source with id {created['id']}"})


async def test_bad_source_input_is_400_with_a_json_error(
    make_pool: PoolFactory, session: aiohttp.ClientSession, listing: Path, tmp_path: Path
) -> None:
    """Unknown parser, invalid cron, bad protocol, missing file, missing url, non-JSON: 400 and nothing added."""
    pool = await make_pool()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"json": {"url": str(listing), "parser": "nope"}}, "unknown parser 'nope'"),
        ({"json": {"url": str(listing), "schedule": "61 * * * *"}}, "not a valid cron expression"),
        (
            {"json": {"url": str(listing), "schedule": "0 0 31 2 *"}},
            "not a valid cron expression",
        ),  # never fires
        ({"json": {"url": str(listing), "protocol": "gopher"}}, "unknown protocol 'gopher'"),
        ({"json": {"url": str(tmp_path / "missing.txt")}}, "does not exist"),
        ({"json": {"url": "ftp://127.0.0.1/list.txt"}}, "unsupported source URL"),
        ({"json": {"parser": "plaintext"}}, "url is required"),
        ({"json": {"url": str(listing), "parser": 5}}, "parser must be a string"),
        ({"json": ["not", "an", "object"]}, "must be a JSON object"),
        ({"data": b"url=/tmp/x", "headers": {"Content-Type": "application/json"}}, "must be JSON"),
    ]
    for kwargs, message in cases:
        status, body = await call(session, "POST", api(pool, "/api/sources"), **kwargs)
        assert status == 400, (kwargs, body)
        assert set(body) == {"error"} and message in body["error"], (kwargs, body)
    assert await call(session, "GET", api(pool, "/api/sources")) == (200, {"sources": []})


async def test_duplicate_source_is_409(
    make_pool: PoolFactory, session: aiohttp.ClientSession, listing: Path
) -> None:
    """The same source twice (as a path, then as its file:// URL) is a 409 conflict."""
    pool = await make_pool()
    status, _ = await call(
        session, "POST", api(pool, "/api/sources"), json={"url": str(listing), "schedule": YEARLY}
    )
    assert status == 201

    status, body = await call(session, "POST", api(pool, "/api/sources"), json={"url": listing.as_uri()})

    assert (status, body) == (409, {"error": f"source {listing.as_uri()} already exists"})
    assert len((await call(session, "GET", api(pool, "/api/sources")))[1]["sources"]) == 1


async def test_bad_source_ids_are_404_or_400(make_pool: PoolFactory, session: aiohttp.ClientSession) -> None:
    """Scraping or deleting an unknown id is 404; an id that is not a number is 400."""
    pool = await make_pool()

    assert (await call(session, "POST", api(pool, "/api/sources/99/scrape")))[0] == 404
    assert (await call(session, "DELETE", api(pool, "/api/sources/99")))[0] == 404
    assert (await call(session, "POST", api(pool, "/api/sources/abc/scrape")))[0] == 400
    assert (await call(session, "DELETE", api(pool, "/api/sources/abc")))[0] == 400


async def test_scrape_now_answers_found_and_new(
    make_pool: PoolFactory, session: aiohttp.ClientSession, aiohttp_server: ServerFactory
) -> None:
    """A new source is scraped by the scheduler at once; POST .../scrape runs it again and answers found/new."""
    body = {"value": LIST}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body["value"], content_type="text/plain")

    app = web.Application()
    app.router.add_get("/proxies.txt", serve)
    server = await aiohttp_server(app, host="127.0.0.1")
    pool = await make_pool()
    watch = ScrapeWatch(pool)

    status, created = await call(
        session,
        "POST",
        api(pool, "/api/sources"),
        json={"url": str(server.make_url("/proxies.txt")), "schedule": YEARLY},
    )
    assert status == 201
    first = await watch.wait_for("proxy.new_batch", created["id"])  # the scheduler woke for the new source
    assert first.payload["count"] == 3

    body["value"] = LIST + b"127.0.0.201:4\n127.0.0.201:5\n"
    status, answer = await call(session, "POST", api(pool, f"/api/sources/{created['id']}/scrape"))

    assert status == 200
    assert (answer["found"], answer["new"], answer["error"]) == (5, 2, None)
    assert answer["source"]["id"] == created["id"]
    assert (answer["source"]["last_found"], answer["source"]["last_new"]) == (5, 2)
    listed = (await call(session, "GET", api(pool, "/api/sources")))[1]["sources"][0]
    assert (listed["last_found"], listed["last_new"], listed["consecutive_failures"]) == (5, 2, 0)

    # the new proxies went to the checker: each is checked (refused on loopback) and known to the pool
    await pool.wait_until(lambda: sum(p.last_checked is not None for p in pool.selector.proxies()) == 5)
    status, proxies = await call(session, "GET", api(pool, "/api/proxies?status=dead"))
    assert status == 200 and proxies["total"] == 5


async def test_scrape_of_a_failing_source_answers_502_with_the_error(
    make_pool: PoolFactory, session: aiohttp.ClientSession, aiohttp_server: ServerFactory
) -> None:
    """Scraping a source that answers 500 gives 502, the error, and a growing failure count."""

    async def broken(request: web.Request) -> web.Response:
        raise web.HTTPInternalServerError()

    app = web.Application()
    app.router.add_get("/list.txt", broken)
    server = await aiohttp_server(app, host="127.0.0.1")
    pool = await make_pool()
    watch = ScrapeWatch(pool)
    status, created = await call(
        session,
        "POST",
        api(pool, "/api/sources"),
        json={"url": str(server.make_url("/list.txt")), "schedule": YEARLY},
    )
    assert status == 201
    await watch.wait_for("source.failed", created["id"])

    status, answer = await call(session, "POST", api(pool, f"/api/sources/{created['id']}/scrape"))

    assert status == 502
    assert answer["error"] == "HTTP 500 Internal Server Error"
    assert (answer["found"], answer["new"]) == (0, 0)
    assert answer["source"]["consecutive_failures"] == 2
    assert answer["source"]["last_error"] == "HTTP 500 Internal Server Error"
    assert pool.selector.proxies() == []


async def test_config_and_cli_sources_are_synced_at_start(
    make_pool: PoolFactory, session: aiohttp.ClientSession, listing: Path, tmp_path: Path
) -> None:
    """[[sources]] from the config and --proxies lists are in the store at start, each with its origin."""
    configured = tmp_path / "configured.txt"
    configured.write_bytes(b"127.0.0.202:1\n")
    pool = await make_pool(
        ["socks5://127.0.0.203:1"],
        sources=[
            {"url": str(configured), "parser": "plaintext", "schedule": YEARLY, "default_protocol": "socks4"}
        ],
    )
    watch = ScrapeWatch(pool)

    status, listed = await call(session, "GET", api(pool, "/api/sources"))

    assert status == 200
    by_origin = {s["origin"]: s for s in listed["sources"]}
    assert set(by_origin) == {"config", "cli"}
    assert by_origin["config"]["url"] == configured.as_uri()
    assert (by_origin["config"]["parser"], by_origin["config"]["default_protocol"]) == ("plaintext", "socks4")
    assert by_origin["cli"]["url"].startswith("file://") and by_origin["cli"]["url"].endswith("list0.txt")
    if not any(e.type == "proxy.new_batch" for e in watch.events):  # the --proxies list is scraped at once
        await pool.wait_until(lambda: len(pool.selector) == 2)
    await pool.wait_until(lambda: len(pool.selector) == 2)
    assert {p.upstream.key for p in pool.selector.proxies()} == {
        ("socks5", "127.0.0.203", 1),
        ("socks4", "127.0.0.202", 1),
    }


async def test_a_config_source_with_a_missing_file_stops_start_up(
    make_pool: PoolFactory, tmp_path: Path
) -> None:
    """A [[sources]] entry naming a file that does not exist is a configuration error naming it."""
    with pytest.raises(ConfigError, match="missing.txt"):
        await make_pool(sources=[{"url": str(tmp_path / "missing.txt")}])
