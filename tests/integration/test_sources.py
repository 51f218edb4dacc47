"""Scraping real sources on loopback through the Scraper, a real SQLite store and the real plugins.

Every source is an aiohttp server (or a raw asyncio server for what aiohttp would refuse to send)
on 127.0.0.1; events are observed by a listener on the registry's event bus and by real
in-process notifier objects.  The proxies scraped are documentation addresses that are never dialed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from config import Settings
from config.settings import SourcesFetchSettings
from plugins.discovery import load_all_plugins
from plugins.registry import PluginRegistry
from pool.models import Event, Proxy, ProxyProtocol, ProxySource, ProxyStatus
from pool.scraper import Scraper
from pool.store import SqliteStore
from pool.tasks import spawn

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

PLAIN = (
    b"# free list, updated hourly\r\n"
    b"192.0.2.1:8080 US elite\r\n"
    b"192.0.2.2:3128\r\n"
    b"socks5://198.51.100.3:1080\r\n"
    b"192.0.2.1:8080\r\n"  # the same proxy twice in one source
    b"not a proxy at all\r\n"
)
PLAIN_KEYS = {("http", "192.0.2.1", 8080), ("http", "192.0.2.2", 3128), ("socks5", "198.51.100.3", 1080)}

HTML = b"""<!DOCTYPE html><html><body>
<table id="nav"><tr><td>Home</td><td>About</td></tr></table>
<table class="table table-striped">
<thead><tr><th>IP Address</th><th>Port</th><th>Code</th><th>Https</th></tr></thead>
<tbody>
<tr><td>203.0.113.10</td><td>8080</td><td>DE</td><td>no</td></tr>
<tr><td>203.0.113.11</td><td>3128</td><td>FR</td><td>yes</td></tr>
<tr><td>192.0.2.2</td><td>3128</td><td>US</td><td>no</td></tr>
</tbody></table></body></html>"""
HTML_KEYS = {("http", "203.0.113.10", 8080), ("http", "203.0.113.11", 3128), ("http", "192.0.2.2", 3128)}

JSON = json.dumps(
    {
        "data": [
            {"ip": "198.51.100.3", "port": "1080", "protocols": ["socks5"]},  # also in PLAIN
            {"ip": "198.51.100.3", "port": 1080, "protocol": "http"},  # same address, other protocol
            {"ip": "203.0.113.20", "port": 80},
        ],
        "total": 3,
    }
).encode()
JSON_KEYS = {("socks5", "198.51.100.3", 1080), ("http", "198.51.100.3", 1080), ("http", "203.0.113.20", 80)}


# fixtures ---------------------------------------------------------------------------------
@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[PluginRegistry]:
    reg = await load_all_plugins(Settings(plugins={"contrib_dir": str(tmp_path / "no-contrib")}))
    yield reg
    await reg.events.drain(0)  # cancel deliveries that are still pending (the slow notifier)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    db = await SqliteStore.open(tmp_path / "pool.db")
    yield db
    await db.close()


@pytest.fixture
def events(registry: PluginRegistry) -> list[Event]:
    seen: list[Event] = []
    registry.events.add_listener(seen.append)
    return seen


def fetch_settings(**overrides: object) -> SourcesFetchSettings:
    return SourcesFetchSettings(**{"timeout": 5.0, "max_bytes": 64 * 1024, **overrides})


@pytest.fixture
async def scraper(store: SqliteStore, registry: PluginRegistry) -> AsyncIterator[Scraper]:
    s = Scraper(store, registry, fetch_settings())
    yield s
    await s.close()


@dataclass
class Bodies:
    """What the list server answers per path; tests change it between scrapes."""

    by_path: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)


@pytest.fixture
async def lists(aiohttp_server: ServerFactory) -> tuple[TestServer, Bodies]:
    bodies = Bodies(
        {
            "/lists/free.txt": (PLAIN, "text/plain"),
            "/free-proxy-list": (HTML, "text/html"),
            "/api/v1/proxies": (JSON, "application/json"),
        }
    )

    async def serve(request: web.Request) -> web.Response:
        bodies.hits[request.path] = bodies.hits.get(request.path, 0) + 1
        if request.path not in bodies.by_path:
            raise web.HTTPNotFound()
        body, content_type = bodies.by_path[request.path]
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    return await aiohttp_server(app, host="127.0.0.1"), bodies


async def add(store: SqliteStore, url: str, parser: str | None = None, protocol: str = "http") -> ProxySource:
    return await store.add_source(
        url, parser=parser, schedule=None, default_protocol=ProxyProtocol(protocol), origin="user"
    )


async def keys_in(store: SqliteStore) -> set[tuple[str, str, int]]:
    return {p.upstream.key for p in await store.all_proxies()}


# parsing real sources ---------------------------------------------------------------------
async def test_plaintext_html_and_json_sources_chosen_by_url(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies]
) -> None:
    """Three sources without a parser name: the URL picks plaintext, html_table and json_api."""
    server, _ = lists
    plain = await add(store, str(server.make_url("/lists/free.txt")))
    html = await add(store, str(server.make_url("/free-proxy-list")))
    api = await add(store, str(server.make_url("/api/v1/proxies")))
    assert scraper.parser_for(plain).name == "plaintext"
    assert scraper.parser_for(html).name == "html_table"
    assert scraper.parser_for(api).name == "json_api"

    results = [await scraper.scrape(s) for s in (plain, html, api)]

    assert [r.error for r in results] == [None, None, None]
    assert await keys_in(store) == PLAIN_KEYS | HTML_KEYS | JSON_KEYS
    by_key = {p.upstream.key: p for p in await store.all_proxies()}
    assert by_key[("http", "203.0.113.11", 3128)].source_id == html.id
    assert by_key[("http", "203.0.113.20", 80)].source_id == api.id
    assert all(p.status is ProxyStatus.NEW for p in by_key.values())


async def test_explicit_parser_and_default_protocol(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies]
) -> None:
    """A named parser wins over the URL, and bare host:port entries take the source's protocol."""
    server, bodies = lists
    bodies.by_path["/download"] = (
        b"192.0.2.50:1080\n192.0.2.51:1080\nsocks4://192.0.2.52:4145\n",
        "text/plain",
    )
    source = await add(store, str(server.make_url("/download")), parser="plaintext", protocol="socks5")

    result = await scraper.scrape(source)

    assert result.error is None
    assert await keys_in(store) == {
        ("socks5", "192.0.2.50", 1080),
        ("socks5", "192.0.2.51", 1080),
        ("socks4", "192.0.2.52", 4145),  # an explicit scheme beats the default
    }


async def test_gzip_compressed_body_is_decoded(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies], aiohttp_server: ServerFactory
) -> None:
    """A list served with Content-Encoding: gzip is decompressed before parsing."""

    async def compressed(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(PLAIN), headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    app = web.Application()
    app.router.add_get("/list.txt", compressed)
    server = await aiohttp_server(app, host="127.0.0.1")
    source = await add(store, str(server.make_url("/list.txt")))

    result = await scraper.scrape(source)

    assert (result.error, result.found) == (None, 3)
    assert await keys_in(store) == PLAIN_KEYS


async def test_local_file_source(store: SqliteStore, scraper: Scraper, tmp_path: Path) -> None:
    """A file:// source is read from disk and parsed like a download."""
    listing = tmp_path / "my proxies.txt"
    listing.write_bytes(PLAIN)
    source = await add(store, listing.as_uri())

    result = await scraper.scrape(source)

    assert (result.error, result.found, len(result.new)) == (None, 3, 3)
    assert await keys_in(store) == PLAIN_KEYS


async def test_realistic_fixture_pages_all_scrape(
    store: SqliteStore, scraper: Scraper, aiohttp_server: ServerFactory
) -> None:
    """Every fixture shaped like a real free-proxy site scrapes end to end to what its parser reads."""
    fixtures = Path(__file__).parents[1] / "fixtures" / "sources"
    files = sorted(p for p in fixtures.iterdir() if p.is_file())
    assert files, "no source fixtures"

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=(fixtures / request.match_info["name"]).read_bytes())

    app = web.Application()
    app.router.add_get("/f/{name}", serve)
    server = await aiohttp_server(app, host="127.0.0.1")
    parser_of = {".txt": "plaintext", ".html": "html_table", ".json": "json_api", ".jsonl": "json_api"}
    for path in files:
        source = await add(store, str(server.make_url(f"/f/{path.name}")), parser=parser_of[path.suffix])
        parsed = await scraper.registry.get_parser(parser_of[path.suffix]).parse(path.read_bytes(), source)
        expected = {d.to_upstream(source.default_protocol).key for d in parsed}

        result = await scraper.scrape(source)

        assert result.error is None, (path.name, result.error)
        assert result.found == len(expected) > 0, path.name
        assert expected <= await keys_in(store), path.name


# dedupe, counts, last result ----------------------------------------------------------------
async def test_dedupe_across_sources_and_repeated_scrapes(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies]
) -> None:
    """Found counts every distinct proxy of a scrape; new only those the pool lacked (protocol, host, port)."""
    server, _ = lists
    plain = await add(store, str(server.make_url("/lists/free.txt")))
    html = await add(store, str(server.make_url("/free-proxy-list")))
    api = await add(store, str(server.make_url("/api/v1/proxies")))

    first = await scraper.scrape(plain)
    again = await scraper.scrape(plain)
    table = await scraper.scrape(html)
    api_result = await scraper.scrape(api)

    assert (first.found, len(first.new)) == (3, 3)  # the duplicate line counts once
    assert (again.found, len(again.new)) == (3, 0)
    assert (table.found, len(table.new)) == (3, 2)  # 192.0.2.2:3128 came from the list already
    assert (api_result.found, len(api_result.new)) == (3, 2)  # socks5 198.51.100.3 known, http one is not
    assert {p.upstream.key for p in api_result.new} == {
        ("http", "198.51.100.3", 1080),
        ("http", "203.0.113.20", 80),
    }
    proxies = await store.all_proxies()
    assert len(proxies) == 7
    assert {p.upstream.key for p in proxies} == PLAIN_KEYS | HTML_KEYS | JSON_KEYS
    # a proxy keeps the source that found it first
    shared = next(p for p in proxies if p.upstream.key == ("http", "192.0.2.2", 3128))
    assert shared.source_id == plain.id


async def test_new_proxies_go_to_on_new_at_once(
    store: SqliteStore, registry: PluginRegistry, lists: tuple[TestServer, Bodies]
) -> None:
    """The new proxies of a scrape are handed to on_new (the checker) before scrape() returns; known ones are not."""
    server, bodies = lists
    handed: list[list[Proxy]] = []
    scraper = Scraper(store, registry, fetch_settings(), on_new=handed.append)
    try:
        source = await add(store, str(server.make_url("/lists/free.txt")))
        result = await scraper.scrape(source)
        assert len(handed) == 1
        assert [p.id for p in handed[0]] == [p.id for p in result.new]
        assert {p.upstream.key for p in handed[0]} == PLAIN_KEYS
        stored = {p.id: p for p in await store.all_proxies()}
        assert all(
            p.id in stored and p.status is ProxyStatus.NEW and p.source_id == source.id for p in handed[0]
        )

        await scraper.scrape(source)  # nothing new: on_new is not called
        assert len(handed) == 1

        bodies.by_path["/lists/free.txt"] = (PLAIN + b"192.0.2.99:8000\n", "text/plain")
        await scraper.scrape(source)
        assert [[p.upstream.key for p in batch] for batch in handed[1:]] == [[("http", "192.0.2.99", 8000)]]
    finally:
        await scraper.close()


async def test_last_result_recorded_for_success_and_failure(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies]
) -> None:
    """Each scrape records when, found, new, error and consecutive failures on the source."""
    server, bodies = lists
    source = await add(store, str(server.make_url("/lists/free.txt")))
    assert (source.last_run_at, source.last_found, source.consecutive_failures) == (None, None, 0)
    slack = timedelta(milliseconds=5)

    before = datetime.now(UTC)
    await scraper.scrape(source)
    after = datetime.now(UTC)
    ok = await store.get_source(source.id)
    assert ok.last_run_at is not None and before - slack <= ok.last_run_at <= after + slack
    assert ok.last_success_at == ok.last_run_at
    assert (ok.last_found, ok.last_new, ok.last_error, ok.consecutive_failures) == (3, 3, None, 0)

    del bodies.by_path["/lists/free.txt"]  # now a 404
    for expected_failures in (1, 2):
        result = await scraper.scrape(source)
        assert result.source.consecutive_failures == expected_failures
    failed = await store.get_source(source.id)
    assert failed.last_error is not None and "404" in failed.last_error
    assert failed.consecutive_failures == 2
    assert failed.last_run_at is not None and failed.last_run_at > ok.last_run_at
    assert failed.last_success_at == ok.last_success_at  # a failure does not move the last success
    assert (failed.last_found, failed.last_new) == (3, 3)  # the last good figures stay

    bodies.by_path["/lists/free.txt"] = (PLAIN, "text/plain")
    await scraper.scrape(source)
    recovered = await store.get_source(source.id)
    assert (recovered.last_found, recovered.last_new, recovered.last_error) == (3, 0, None)
    assert recovered.consecutive_failures == 0
    assert recovered.last_success_at is not None and recovered.last_success_at > ok.last_success_at


async def test_concurrent_scrapes_of_one_source_fetch_once(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies]
) -> None:
    """Two scrapes of one source at the same time share one fetch and one result."""
    server, bodies = lists
    source = await add(store, str(server.make_url("/lists/free.txt")))

    a, b = await asyncio.gather(scraper.scrape(source), scraper.scrape(source))

    assert a is b
    assert bodies.hits["/lists/free.txt"] == 1


async def test_a_cancelled_caller_does_not_freeze_the_source(
    store: SqliteStore, registry: PluginRegistry, events: list[Event]
) -> None:
    """A scrape whose caller was cancelled still finishes, and the next scrape fetches again."""
    async with stalling_server() as (host, port, arrived):
        scraper = Scraper(store, registry, fetch_settings(timeout=0.5))
        try:
            source = await add(store, f"http://{host}:{port}/list.txt")
            failed = asyncio.Event()
            registry.events.add_listener(lambda e: failed.set() if e.type == "source.failed" else None)
            caller = spawn(scraper.scrape(source), name="impatient-caller")
            await asyncio.wait_for(arrived.wait(), 10)
            caller.cancel()  # the caller gives up while the fetch hangs; the scrape itself goes on
            with pytest.raises(asyncio.CancelledError):
                await caller
            await asyncio.wait_for(failed.wait(), 10)

            second = await scraper.scrape(source)

            assert second.source.consecutive_failures == 2
            assert [e.payload["consecutive_failures"] for e in events if e.type == "source.failed"] == [1, 2]
        finally:
            await scraper.close()


# hostile sources --------------------------------------------------------------------------
LINES = b"".join(f"10.{i // 250}.{i % 250}.1:8080\n".encode() for i in range(1000))  # valid lines, 17 KB


@asynccontextmanager
async def raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, int, asyncio.Event]]:
    """A bare TCP server on 127.0.0.1 that says exactly what a test wants, or nothing at all.

    Yields host, port and an event set once a request head has arrived.
    """
    release = asyncio.Event()
    arrived = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            arrived.set()
            await answer(reader, writer)
            await release.wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield host, port, arrived
    finally:
        release.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def stalling_server() -> AsyncIterator[tuple[str, int, asyncio.Event]]:
    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None  # accept, read the request, never answer

    return raw_server(nothing)  # type: ignore[return-value]


async def oversized_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1073741824\r\n\r\n" + LINES)
    await writer.drain()


@pytest.fixture
async def hostile(aiohttp_server: ServerFactory) -> AsyncIterator[dict[str, tuple[str, str | None]]]:
    """Name -> (source URL, parser) of each hostile source."""

    async def junk(request: web.Request) -> web.Response:
        return web.Response(body=random.Random(7).randbytes(16384), content_type="application/octet-stream")

    async def html_page(request: web.Request) -> web.Response:
        return web.Response(
            text="<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
            "<body><h1>Checking your browser</h1></body></html>",
            content_type="text/html",
        )

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        try:
            for _ in range(100_000):  # far past any cap; bounded so the test is too
                await response.write(LINES)
        except ConnectionError:
            pass
        return response

    async def bomb(request: web.Request) -> web.Response:
        body = gzip.compress(LINES * 200)  # 3.4 MB of valid lines in ~60 KB... a decompression bomb
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def loop_a(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop/b.txt")

    async def loop_b(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop/a.txt")

    async def fails(request: web.Request) -> web.Response:
        raise web.HTTPInternalServerError(text="upstream exploded")

    app = web.Application()
    app.router.add_get("/junk.txt", junk)
    app.router.add_get("/api/proxies", html_page)
    app.router.add_get("/endless.txt", endless)
    app.router.add_get("/bomb.txt", bomb)
    app.router.add_get("/loop/a.txt", loop_a)
    app.router.add_get("/loop/b.txt", loop_b)
    app.router.add_get("/500.txt", fails)
    server = await aiohttp_server(app, host="127.0.0.1")
    async with stalling_server() as (s_host, s_port, _), raw_server(oversized_answer) as (o_host, o_port, _):
        yield {
            "binary junk": (str(server.make_url("/junk.txt")), None),
            "html for json": (str(server.make_url("/api/proxies")), "json_api"),
            "endless body": (str(server.make_url("/endless.txt")), None),
            "gzip bomb": (str(server.make_url("/bomb.txt")), None),
            "declared too large": (f"http://{o_host}:{o_port}/big.txt", None),
            "stalls": (f"http://{s_host}:{s_port}/list.txt", None),
            "redirect loop": (str(server.make_url("/loop/a.txt")), None),
            "server error": (str(server.make_url("/500.txt")), None),
            "missing file": (Path("/nonexistent-dir/gone.txt").as_uri(), None),
        }


HOSTILE_ERRORS = {
    "binary junk": "binary data",
    "html for json": "body is not JSON",
    "endless body": "larger than the 65536 byte cap",
    "gzip bomb": "larger than the 65536 byte cap",
    "declared too large": "body of 1073741824 bytes is larger than the 65536 byte cap",
    "stalls": "timed out after 0.5 s",
    "redirect loop": "more than 5 redirects",
    "server error": "HTTP 500",
    "missing file": "does not exist",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ERRORS))
async def test_hostile_source_fails_cleanly_and_upserts_nothing(
    case: str,
    hostile: dict[str, tuple[str, str | None]],
    store: SqliteStore,
    registry: PluginRegistry,
    events: list[Event],
) -> None:
    """A hostile source gives source.failed with a clear one-line error, and the store stays empty."""
    url, parser = hostile[case]
    scraper = Scraper(store, registry, fetch_settings(timeout=0.5, max_bytes=64 * 1024))
    try:
        source = await add(store, url, parser=parser)

        result = await scraper.scrape(source)
    finally:
        await scraper.close()

    assert result.error is not None and HOSTILE_ERRORS[case] in result.error, result.error
    assert "\n" not in result.error and len(result.error) <= 400
    assert (result.found, result.new) == (0, [])
    assert await store.all_proxies() == []
    failed = [e for e in events if e.type == "source.failed"]
    assert len(failed) == 1
    assert failed[0].payload == {
        "source_id": source.id,
        "source": url,
        "error": result.error,
        "consecutive_failures": 1,
    }
    assert not [e for e in events if e.type == "proxy.new_batch"]
    recorded = await store.get_source(source.id)
    assert (recorded.last_error, recorded.consecutive_failures, recorded.last_success_at) == (
        result.error,
        1,
        None,
    )


async def test_unknown_parser_on_a_stored_source_is_a_failure_not_a_crash(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies], events: list[Event]
) -> None:
    """A source naming a parser that is no longer installed fails with a message naming it."""
    server, _ = lists
    source = await add(store, str(server.make_url("/lists/free.txt")), parser="removed_plugin")

    result = await scraper.scrape(source)

    assert result.error is not None and "removed_plugin" in result.error
    assert [e.type for e in events] == ["source.failed"]
    assert await store.all_proxies() == []


# events -----------------------------------------------------------------------------------
async def test_new_batch_event_carries_source_and_count(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies], events: list[Event]
) -> None:
    """proxy.new_batch names the source and counts only the new proxies; no event when nothing is new."""
    server, _ = lists
    plain = await add(store, str(server.make_url("/lists/free.txt")))
    html = await add(store, str(server.make_url("/free-proxy-list")))

    await scraper.scrape(plain)
    await scraper.scrape(plain)
    await scraper.scrape(html)

    batches = [e for e in events if e.type == "proxy.new_batch"]
    assert [e.payload for e in batches] == [
        {"source_id": plain.id, "source": plain.url, "count": 3},
        {"source_id": html.id, "source": html.url, "count": 2},
    ]
    assert all(e.at.tzinfo is not None for e in batches)


async def test_source_failed_counts_consecutive_failures(
    store: SqliteStore, scraper: Scraper, lists: tuple[TestServer, Bodies], events: list[Event]
) -> None:
    """Each failure in a row raises consecutive_failures in source.failed; a success resets it."""
    server, bodies = lists
    source = await add(store, str(server.make_url("/lists/gone.txt")))

    for _ in range(3):
        await scraper.scrape(source)
    bodies.by_path["/lists/gone.txt"] = (PLAIN, "text/plain")
    await scraper.scrape(source)
    del bodies.by_path["/lists/gone.txt"]
    await scraper.scrape(source)

    failed = [e.payload for e in events if e.type == "source.failed"]
    assert [p["consecutive_failures"] for p in failed] == [1, 2, 3, 1]
    assert all(p["error"] == "HTTP 404 Not Found" and p["source_id"] == source.id for p in failed)


@dataclass
class RecordingNotifier:
    """A real in-process notifier: remembers what it was sent."""

    name: str
    subscribes_to: list[str]
    received: list[Event] = field(default_factory=list)

    async def notify(self, event: Event) -> None:
        self.received.append(event)

    async def health_check(self) -> bool:
        return True


@dataclass
class SlowNotifier:
    """Never finishes a delivery: it waits for a signal nobody sends."""

    name: str = "slow"
    subscribes_to: list[str] = field(default_factory=lambda: ["*"])
    started: asyncio.Event = field(default_factory=asyncio.Event)
    never: asyncio.Event = field(default_factory=asyncio.Event)

    async def notify(self, event: Event) -> None:
        self.started.set()
        await self.never.wait()

    async def health_check(self) -> bool:
        return True


@dataclass
class FailingNotifier:
    """Raises on every delivery, like a webhook whose endpoint is down."""

    name: str = "failing"
    subscribes_to: list[str] = field(default_factory=lambda: ["*"])
    calls: int = 0

    async def notify(self, event: Event) -> None:
        self.calls += 1
        raise ConnectionRefusedError("webhook endpoint refused the connection")

    async def health_check(self) -> bool:
        return False


async def test_glob_subscriptions_pick_their_events(
    store: SqliteStore, scraper: Scraper, registry: PluginRegistry, lists: tuple[TestServer, Bodies]
) -> None:
    """'*' gets every event, 'proxy.*' only proxy events, 'source.failed' only that one."""
    everything = RecordingNotifier("everything", ["*"])
    proxies = RecordingNotifier("proxies", ["proxy.*"])
    failures = RecordingNotifier("failures", ["source.failed"])
    several = RecordingNotifier("several", ["proxy.new_batch", "source.*"])
    for notifier in (everything, proxies, failures, several):
        registry.register_notifier(notifier, "tests")
    server, _ = lists
    good = await add(store, str(server.make_url("/lists/free.txt")))
    bad = await add(store, str(server.make_url("/lists/missing.txt")))

    await scraper.scrape(good)
    await scraper.scrape(bad)
    await registry.events.drain(10)  # deliveries are fire-and-forget: let them land

    def types(n: RecordingNotifier) -> list[str]:
        return [e.type for e in n.received]

    assert types(everything) == ["proxy.new_batch", "source.failed"]
    assert types(proxies) == ["proxy.new_batch"]
    assert types(failures) == ["source.failed"]
    assert types(several) == ["proxy.new_batch", "source.failed"]
    assert failures.received[0].payload["source_id"] == bad.id


async def test_slow_and_failing_notifiers_never_block_or_break_the_scraper(
    store: SqliteStore, scraper: Scraper, registry: PluginRegistry, lists: tuple[TestServer, Bodies]
) -> None:
    """A notifier that never returns and one that raises: scrapes finish, results are right, others still hear."""
    slow, failing = SlowNotifier(), FailingNotifier()
    recorder = RecordingNotifier("recorder", ["*"])
    for notifier in (slow, failing, recorder):
        registry.register_notifier(notifier, "tests")
    server, _ = lists
    good = await add(store, str(server.make_url("/lists/free.txt")))
    bad = await add(store, str(server.make_url("/lists/missing.txt")))

    first = await scraper.scrape(good)
    await asyncio.wait_for(slow.started.wait(), 10)  # the slow delivery is under way and stuck
    second = await scraper.scrape(bad)
    third = await scraper.scrape(good)

    assert (first.found, len(first.new), first.error) == (3, 3, None)
    assert second.error == "HTTP 404 Not Found"
    assert (third.found, len(third.new), third.error) == (3, 0, None)
    assert len(await store.all_proxies()) == 3
    await registry.events.drain(0.5)  # the recorder and the failing one finish; the slow one is cancelled
    assert [e.type for e in recorder.received] == ["proxy.new_batch", "source.failed"]
    assert failing.calls == 2
    assert registry.events.delivery_failures["failing"] == 2
    assert "webhook endpoint refused" in registry.events.last_error["failing"]
    assert "recorder" not in registry.events.delivery_failures
